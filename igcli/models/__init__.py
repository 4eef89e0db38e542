"""Model loading and the runtimes behind the Backend interface."""
