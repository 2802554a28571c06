"""The gnomon server: NTS-KE and NTP/NTS services around the sans-I/O core."""
