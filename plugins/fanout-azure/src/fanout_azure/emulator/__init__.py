"""The Azure Batch emulator: a local server the official azure-batch SDK talks to."""
