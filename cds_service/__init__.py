"""ketamine-cds: CDS Hooks 2.0 decision support for ketamine and esketamine in depression."""

__version__ = "0.1.0"
