"""The publisher database: SQLAlchemy 2 models, one module per concept, and Alembic migrations."""
