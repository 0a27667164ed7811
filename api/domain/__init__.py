"""The API's workflows, one module per domain; the routes only map HTTP onto them."""
