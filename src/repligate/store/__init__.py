"""Persistence: SQLAlchemy rows, repository functions and Alembic migrations.

The only package that speaks SQL. Runs on SQLite (WAL) and PostgreSQL with one schema.
"""
