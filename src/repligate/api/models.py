"""Models and their versions, with Replicate's openapi_schema (the official client reads
the version after every ``run()``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from repligate.api.deps import CurrentKey, ServiceDep, base_url, container
from repligate.api.wire import model_out, version_out
from repligate.models.spec import ModelSpec

router = APIRouter()


@router.get("/models")
def list_models(request: Request, service: ServiceDep, key: CurrentKey) -> dict[str, Any]:
    base = base_url(request)
    return {
        "next": None,
        "previous": None,
        "results": [
            _with_route(request, spec, model_out(spec, base, service.run_count(spec)))
            for spec in service.registry.all()
        ],
    }


@router.get("/models/{owner}/{name}")
def get_model(
    owner: str, name: str, request: Request, service: ServiceDep, key: CurrentKey
) -> dict[str, Any]:
    spec = service.registry.model(owner, name)
    return _with_route(request, spec, model_out(spec, base_url(request), service.run_count(spec)))


def _with_route(request: Request, spec: ModelSpec, model: dict[str, Any]) -> dict[str, Any]:
    """Where the model runs on this server: ``local`` or ``replicate`` (relayed)."""
    routes = container(request).routes
    model["route"] = routes.route(spec) if routes is not None else "local"
    return model


@router.get("/models/{owner}/{name}/versions")
def list_versions(owner: str, name: str, service: ServiceDep, key: CurrentKey) -> dict[str, Any]:
    spec = service.registry.model(owner, name)
    return {"next": None, "previous": None, "results": [version_out(spec)]}


@router.get("/models/{owner}/{name}/versions/{version_id}")
def get_version(
    owner: str, name: str, version_id: str, service: ServiceDep, key: CurrentKey
) -> dict[str, Any]:
    return version_out(service.registry.version(owner, name, version_id))
