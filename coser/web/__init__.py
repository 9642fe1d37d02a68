"""A local web app over the toolkit's book data, test sets, personas, models and cache (`python -m coser.web`)."""
