"""AWS Secrets Manager rotation for Aurora PostgreSQL and PostgreSQL users."""

__version__ = "0.1.0"
