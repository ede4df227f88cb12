"""The service's HTTP routes, one module per audience: search (devices), catalog writes, admin, ops."""
