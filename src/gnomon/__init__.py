"""gnomon: secure network time (NTS, RFC 8915) for Python."""
