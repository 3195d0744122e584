"""Database: models, engine/session factory, migrations."""
