"""How long a cookie may be and how many a client keeps: the NTS-KE parser and the
NTP client both apply them, and a query from cached cookies imports only this
(not :mod:`.ke`, the NTS-KE record code)."""

MAX_COOKIE_LEN = 256
MIN_COOKIE_LEN = 16
MAX_COOKIES = 8
