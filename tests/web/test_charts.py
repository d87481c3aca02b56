"""Server-side SVG charts: they parse, hold one bar per value with that value, say in
words what they show, and give their figures as a table."""
import xml.etree.ElementTree as ET

from gateway.web import charts

NS = {"s": "http://www.w3.org/2000/svg"}


def _parse(chart: charts.Chart) -> ET.Element:
    root = ET.fromstring(chart.svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("role") == "img"
    title, desc = root.find("s:title", NS), root.find("s:desc", NS)
    assert title.text == chart.title and desc.text == chart.summary
    assert root.get("aria-labelledby") == f"{title.get('id')} {desc.get('id')}"
    return root


def _bars(root: ET.Element) -> list[dict]:
    return [{**r.attrib, "h": float(r.get("height"))} for r in root.iter("{http://www.w3.org/2000/svg}rect")
            if r.get("class") == "bar"]


def test_stacked_bars_per_day_by_outcome():
    days = ["2026-12-01", "2026-12-02", "2026-12-03"]
    chart = charts.stacked_bars("Transfers per day by outcome", days,
                                {"completed": [3, 0, 5], "failed": [1, 0, 0], "cancelled": [0, 0, 0]})
    bars = _bars(_parse(chart))
    assert [(b["data-label"], b["data-series"], b["data-value"]) for b in bars] == [
        ("2026-12-01", "completed", "3"), ("2026-12-01", "failed", "1"),
        ("2026-12-03", "completed", "5")]
    # heights in proportion to the values: 5 is five times 1
    by = {(b["data-label"], b["data-series"]): b["h"] for b in bars}
    assert abs(by[("2026-12-03", "completed")] - 5 * by[("2026-12-01", "failed")]) < 0.5
    assert chart.summary == ("Transfers per day by outcome: 9 in 3 days (8 completed, 1 failed); "
                             "busiest 2026-12-03 with 5.")
    assert chart.table[0] == ("day", "completed", "failed", "total")  # an empty series is left out
    assert chart.table[1:] == (("2026-12-01", "3", "1", "4"), ("2026-12-02", "0", "0", "0"),
                               ("2026-12-03", "5", "0", "5"))


def test_histogram_of_latencies():
    chart = charts.histogram("Delivery latency", [("≤ 5 s", 2), ("≤ 1 min", 7), ("≤ 5 min", 0)],
                             "from start to verified receipt", "transfers")
    bars = _bars(_parse(chart))
    assert [(b["data-label"], b["data-value"]) for b in bars] == [
        ("≤ 5 s", "2"), ("≤ 1 min", "7"), ("≤ 5 min", "0")]
    assert bars[2]["h"] == 0 and bars[1]["h"] > bars[0]["h"] * 3
    assert chart.summary == "Delivery latency: 9 in all; most (7) ≤ 1 min."
    assert chart.table == (("from start to verified receipt", "transfers"),
                           ("≤ 5 s", "2"), ("≤ 1 min", "7"), ("≤ 5 min", "0"))


def test_horizontal_bars_slowest_first_with_readable_values():
    chart = charts.horizontal_bars("Sources by time to records",
                                   [("pacs", 30.0, "2 pulls"), ("ehr", 7200.0, "1 pull")],
                                   "median time to records", charts.duration)
    root = _parse(chart)
    bars = _bars(root)
    assert [(b["data-label"], b["data-value"]) for b in bars] == [("ehr", "7200"), ("pacs", "30")]
    assert "2 h" in ET.tostring(root, encoding="unicode")
    assert chart.table[1:] == (("ehr", "2 h", "1 pull"), ("pacs", "30 s", "2 pulls"))
    assert chart.summary.startswith("Sources by time to records: 2 sources; slowest ehr at 2 h")


def test_empty_charts_still_parse_and_say_so():
    for chart in (charts.histogram("Delivery latency", [], "latency"),
                  charts.horizontal_bars("Sources by time to records", [], "median"),
                  charts.stacked_bars("Transfers per day by outcome", ["2026-12-01"],
                                      {"completed": [0]})):
        root = _parse(chart)
        assert all(b["data-value"] == "0" for b in _bars(root))
    assert charts.histogram("Delivery latency", [], "latency").summary == "Delivery latency: none yet."


def test_labels_are_escaped_and_ids_differ_between_charts():
    a = charts.horizontal_bars("A & B", [("<script>", 1.0, "")], "v")
    b = charts.histogram("Other chart", [("x", 1)], "v")
    assert "<script>" not in a.svg and "&lt;script&gt;" in a.svg
    ids = {e.get("id") for c in (a, b) for e in ET.fromstring(c.svg).iter() if e.get("id")}
    assert len(ids) == 4


def test_durations_in_words():
    assert [charts.duration(s) for s in (45, 600, 3 * 3600, 3 * 86400, 5000, 12600, 1.5 * 86400)] == [
        "45 s", "10 min", "3 h", "3 d", "1.4 h", "3.5 h", "1.5 d"]
