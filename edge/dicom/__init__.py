"""DICOM ingest and decoding."""
