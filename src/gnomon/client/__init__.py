"""Clients over sockets (blocking and asyncio) around the sans-I/O core in
:mod:`gnomon.proto`: NTS-KE (:mod:`.ke`), NTP/NTS (:mod:`.ntp`) and the
:class:`~.session.Session` that ties them together."""
