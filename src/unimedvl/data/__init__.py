"""The ingest step and the data record (DESIGN section 4)."""
