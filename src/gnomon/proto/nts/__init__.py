"""NTS (RFC 8915) without I/O: NTP packets and extension fields, NTS-KE records,
AEADs and exporter contexts, the server's cookies, and the client's and
server's protocol objects."""
