"""``gnomon status``: a readable summary of a running server's metrics."""

from __future__ import annotations

import time
import urllib.request
from collections import defaultdict

from ..errors import GnomonError


def fetch_metrics(url: str, timeout: float = 3.0) -> dict[str, dict[str, float]]:
    """``{metric name: {label value or "": value}}`` from a Prometheus endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode()
    except OSError as exc:
        raise GnomonError(f"cannot read metrics from {url}: {exc}") from None
    values: dict[str, dict[str, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = next(iter(sample.labels.values()), "") if sample.labels else ""
            values[sample.name][label] = sample.value
    return values


def summarize(values: dict[str, dict[str, float]]) -> str:
    def one(name: str) -> float | None:
        found = values.get(name)
        return next(iter(found.values())) if found else None

    lines = []
    synchronized = one("gnomon_synchronized")
    stratum = one("gnomon_stratum")
    if synchronized is not None:
        state = "synchronised" if synchronized else "NOT synchronised (leap 3)"
        lines.append(f"time:        {state}, stratum {int(stratum or 0)}")
    offset = one("gnomon_upstream_offset_seconds")
    if offset is not None:
        lines.append(f"upstream:    offset {offset * 1e3:+.3f} ms at the last poll")
    ntp = values.get("gnomon_ntp_requests_total", {})
    if ntp:
        lines.append("NTP:         " + ", ".join(f"{k} {int(v)}" for k, v in sorted(ntp.items())))
    tracked = one("gnomon_ntp_rate_limit_clients")
    if tracked is not None:
        lines.append(f"rate limit:  {int(tracked)} client prefixes tracked")
    ke = values.get("gnomon_ke_connections_total", {})
    if ke:
        lines.append("NTS-KE:      " + ", ".join(f"{k} {int(v)}" for k, v in sorted(ke.items())))
        lines.append(f"             {int(one('gnomon_ke_in_flight') or 0)} in flight")
    roughtime = values.get("gnomon_roughtime_requests_total", {})
    if roughtime:
        counts = ", ".join(f"{k} {int(v)}" for k, v in sorted(roughtime.items()))
        lines.append(f"Roughtime:   {counts}")
        batches = int(one("gnomon_roughtime_batches_total") or 0)
        answered = int(roughtime.get("answered", 0))
        per = f" ({answered / batches:.1f} responses per batch)" if batches else ""
        lines.append(f"             {batches} batches signed{per}")
    delegation = one("gnomon_roughtime_delegation_expiry_timestamp_seconds")
    if delegation is not None:
        hours = (delegation - time.time()) / 3600
        lines.append(f"Roughtime key: online key delegated for {hours:.1f} h more")
    key_id = one("gnomon_cookie_key_id")
    if key_id is not None and (ntp or ke or not roughtime):  # a Roughtime-only server has none
        age = one("gnomon_cookie_key_age_seconds") or 0.0
        reachable = one("gnomon_key_store_reachable")
        store = (
            ""
            if reachable is None
            else (", store reachable" if reachable else ", STORE UNREACHABLE")
        )
        lines.append(f"cookie keys: key {int(key_id)} in force for {age / 3600:.1f} h{store}")
    expiry = one("gnomon_certificate_expiry_timestamp_seconds")
    if expiry is not None:
        days = (expiry - time.time()) / 86400
        lines.append(f"certificate: expires in {days:.1f} days")
    return "\n".join(lines) or "no gnomon metrics found"
