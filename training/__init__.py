"""Training code that lives outside the library (needs Lightning); see training/zoo for the model zoo."""
