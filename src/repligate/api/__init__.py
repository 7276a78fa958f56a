"""HTTP: routes, wire schemas and error responses. The only package that knows HTTP."""
