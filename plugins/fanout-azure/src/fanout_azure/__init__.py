"""Azure for fanout: Azure Blob Storage (``az://``) with least-privilege SAS URLs."""
