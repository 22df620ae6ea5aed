"""Storage backends: what uploads and downloads need from wherever files are kept."""
