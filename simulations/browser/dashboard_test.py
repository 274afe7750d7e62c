"""The dashboard in a real headless Chromium, as a person uses it.

Run by simulations/tests/mesh/dashboard.rs with one JSON argument that
describes the mesh it started. Every check asserts what the page shows;
screenshots of each page go to `shots`.
"""
import json
import os
import signal
import sys
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdp import Browser  # noqa: E402

cfg = json.loads(sys.argv[1])
URL = cfg["url"]
SHOTS = cfg["shots"]
os.makedirs(SHOTS, exist_ok=True)


def http(path, token, method="GET", body=None):
    req = urllib.request.Request(URL + path, method=method, data=json.dumps(body).encode() if body else None)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    if body:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def sign_in(b, token, url=URL + "/"):
    b.goto(url)
    b.eval("sessionStorage.clear()")
    b.goto(url)
    b.wait("document.querySelector('#signin')")
    b.eval(f"document.querySelector('#token').value = {json.dumps(token)};"
           "document.querySelector('#signin button').click()")


def text(b, sel):
    return b.eval(f"(document.querySelector({json.dumps(sel)}) || {{innerText: ''}}).innerText")


def row_state(b, path):
    return b.eval(f"(document.querySelector('tr[data-path={json.dumps(path)}]') || {{dataset: {{}}}}).dataset.state")


def count(b, cls):
    return int(b.eval(f"document.querySelector('[data-count={cls}] b').innerText"))


jobs = cfg["jobs"]  # state → path
checks = 0

b = Browser()
try:
    # A wrong token is refused with a message, on the page.
    sign_in(b, "not-the-token")
    b.wait("document.querySelector('#signin .error')")
    assert "wrong API token" in text(b, "#signin .error"), text(b, "#signin")
    checks += 1

    # The administrator's overview: every state at a glance, with counts.
    sign_in(b, cfg["admin"])
    b.wait("document.body.dataset.view === 'overview'")
    for state, path in jobs.items():
        b.wait(f"document.querySelector('tr[data-path={json.dumps(path)}]')?.dataset.state === {json.dumps(state)}",
               timeout=30)
        checks += 1
    for state in ["ok", "stale", "failing", "paused"]:
        assert count(b, state) == 1, (state, text(b, "#counts"))
    assert count(b, "total") == 4, text(b, "#counts")
    failing_row = text(b, f"tr[data-path={json.dumps(jobs['failing'])}]")
    assert cfg["failure"] in failing_row, failing_row
    assert "FAILING" in failing_row and "STALE" in text(b, f"tr[data-path={json.dumps(jobs['stale'])}]")
    # Every job's history strip on the overview, from the mesh state alone:
    # the failing job's OK runs, then its failures in red, last.
    cells = f"tr[data-path={json.dumps(jobs['failing'])}] .strip .cell"
    over = b.eval(f"[...document.querySelectorAll({json.dumps(cells)})].map(c => c.dataset.kind).filter(k => k !== 'missed')")
    assert over and over[-1] == "failed" and "finished" in over, over
    first_failed = over.index("failed")
    assert all(k == "failed" for k in over[first_failed:]) and "finished" in over[:first_failed], over
    red = b.eval(f"getComputedStyle(document.querySelector({json.dumps(cells + '.failed')})).backgroundColor")
    assert red == "rgb(198, 40, 40)", red
    checks += 1
    # Sites group the nodes; the federated mesh is a further site.
    sites = b.eval("[...document.querySelectorAll('section.site')].map(s => s.dataset.site)")
    for s in cfg["sites"]:
        assert s in sites, (s, sites)
    fed = cfg["federated"]
    b.wait(f"[...document.querySelectorAll('section.site')].some(s => s.dataset.site.startsWith({json.dumps(fed)})"
           " && !s.innerText.includes('UNREACHABLE'))")
    checks += 3
    b.screenshot(os.path.join(SHOTS, "overview-admin.png"))

    # The failing job's page says why, in plain words, and charts every run.
    b.goto(URL + "/#/job?node=" + cfg["failing_node"] + "&path=" + urllib.request.quote(jobs["failing"], safe=""))
    b.wait("document.body.dataset.view === 'job' && document.querySelector('#failure')")
    assert cfg["failure"] in text(b, "#failure"), text(b, "#failure")
    assert b.eval("document.querySelectorAll('svg.chart rect').length") >= 2
    # Its history strip: the OK runs, then the failed ones in red, last.
    kinds = b.eval("[...document.querySelectorAll('#strip .cell')].map(c => c.dataset.kind).filter(k => k !== 'missed')")
    assert kinds and kinds[-1] == "failed" and "finished" in kinds, kinds
    first_failed = kinds.index("failed")
    assert all(k == "failed" for k in kinds[first_failed:]) and "finished" in kinds[:first_failed], kinds
    red = b.eval("getComputedStyle(document.querySelector('#strip .cell.failed')).backgroundColor")
    assert red == "rgb(198, 40, 40)", red
    # Charts drawn at the page's width (nothing stretched), at two widths.
    for width in (1400, 800):
        b.call("Emulation.setDeviceMetricsOverride",
               {"width": width, "height": 1000, "deviceScaleFactor": 1, "mobile": False})
        b.eval("window.dispatchEvent(new Event('resize'))")
        b.wait(f"[...document.querySelectorAll('svg.chart')].every(s => s.getBoundingClientRect().right <= {width})"
               " && document.querySelector('svg.chart')")
        b.screenshot(os.path.join(SHOTS, f"job-failing-{width}.png"))
    b.call("Emulation.clearDeviceMetricsOverride")
    b.screenshot(os.path.join(SHOTS, "job-failing.png"))
    checks += 2

    # Run now, as an administrator: the result appears on the page.
    b.goto(URL + "/#/job?node=" + cfg["ok_node"] + "&path=" + urllib.request.quote(jobs["ok"], safe=""))
    b.wait("document.body.dataset.view === 'job' && document.querySelector('#run-now')")
    b.wait("/post hook .* failed \\(exit 9\\): post hook says no/.test(document.querySelector('#plugin .hook')?.innerText || '')")
    before = b.eval("document.querySelectorAll('#executions tbody tr').length")
    b.eval("document.querySelector('#run-now').click()")
    status = b.wait("/Backup (finished|unchanged)/.test(document.querySelector('#action-status')?.innerText || '')"
                    " && document.querySelector('#action-status').innerText", timeout=60)
    b.wait(f"document.querySelectorAll('#executions tbody tr').length > {before}")
    b.screenshot(os.path.join(SHOTS, "job-run-now.png"))
    checks += 1

    # Inside an archive: its tree, one file downloaded byte for byte.
    b.wait("document.querySelector('table.archives button.browse')")
    b.eval("document.querySelector('table.archives button.browse').click()")
    b.wait("document.querySelector('#files tr[data-path=\"data.txt\"]')")
    b.eval("document.querySelector('#files tr[data-path=\"data.txt\"] button.download').click()")
    b.wait("document.querySelector('#last-download')")
    got = b.eval("window.backmeshDownloaded.text()")
    assert got == cfg["ok_content"], got
    b.eval("document.querySelector('#files tr[data-path=\"data.txt\"] button.versions').click()")
    b.wait("document.querySelectorAll('#versions tbody tr').length >= 1")
    b.screenshot(os.path.join(SHOTS, "job-browser.png"))
    # Restore it here: the node serving the page restores its own series.
    b.eval(f"document.querySelector('#restore-to').value = {json.dumps(cfg['restore_to'])};"
           "document.querySelector('#restore-to').dispatchEvent(new Event('input'));"
           "document.querySelector('#restore-here').click()")
    b.wait("/Restored|failed/.test(document.querySelector('#action-status')?.innerText || '')", timeout=60)
    assert "Restored" in text(b, "#action-status"), text(b, "#action-status")
    with open(os.path.join(cfg["restore_to"], "data.txt")) as f:
        assert f.read() == cfg["ok_content"]
    checks += 3

    # Nodes: up and down, last seen, free space, what each keeps.
    b.goto(URL + "/#/nodes")
    b.wait("document.body.dataset.view === 'nodes'")
    down = cfg["down_node"]
    b.wait(f"document.querySelector('tr[data-node={json.dumps(down)}]')?.innerText.includes('DOWN')")
    assert b.eval("document.querySelectorAll('table.nodes tbody tr').length") == cfg["node_count"]
    held = b.eval(f"document.querySelector('tr[data-node={json.dumps(cfg['ok_node'])}]').children[5].innerText")
    assert int(held) >= 1, held
    b.screenshot(os.path.join(SHOTS, "nodes.png"))
    checks += 1

    # A federated mesh that goes away is marked unreachable.
    os.kill(cfg["federated_pid"], signal.SIGKILL)
    b.goto(URL + "/#/")
    b.wait(f"[...document.querySelectorAll('section.site')].some(s => s.dataset.site === {json.dumps(fed)}"
           " && s.innerText.includes('UNREACHABLE'))", timeout=30)
    b.screenshot(os.path.join(SHOTS, "overview-federated-unreachable.png"))
    checks += 1

    # A viewer sees everything but no admin buttons, and the API refuses its writes.
    sign_in(b, cfg["viewer"])
    b.wait("document.body.dataset.view === 'overview'")
    b.goto(URL + "/#/job?node=" + cfg["ok_node"] + "&path=" + urllib.request.quote(jobs["ok"], safe=""))
    b.wait("document.body.dataset.view === 'job'")
    assert not b.eval("!!document.querySelector('#run-now, #pause, #resume')"), "a viewer sees admin buttons"
    assert "read-only" in text(b, "#who")
    b.screenshot(os.path.join(SHOTS, "job-viewer.png"))
    for method, path, body in [("POST", "/api/v1/run", {"node": cfg["ok_node"], "path": jobs["ok"]}),
                               ("POST", "/api/v1/jobs", {"node": cfg["ok_node"], "path": "/tmp", "every": 5}),
                               ("POST", "/api/v1/nodes/" + cfg["ok_node"] + "/pause", None),
                               ("POST", "/api/v1/restore", {"node": cfg["ok_node"], "path": jobs["ok"], "to": "/tmp/x"}),
                               ("GET", "/api/v1/fetch?node=" + cfg["ok_node"] + "&path=" + jobs["ok"], None)]:
        code, out = http(path, cfg["viewer"], method, body)
        assert code == 403 and "read-only" in out, (path, code, out)
    assert http("/api/v1/status", cfg["viewer"])[0] == 200
    checks += 2

    # The client's page: only its site, in plain language.
    site = cfg["client_site"]
    sign_in(b, cfg["client_token"], URL + "/site/" + site)
    b.wait("document.body.dataset.view === 'client'")
    summary = text(b, "#summary")
    assert "1 of 2 backups are healthy" in summary, summary
    items = b.eval("[...document.querySelectorAll('ul.plain li')].map(li => li.innerText)")
    assert len(items) == 2, items
    assert any(jobs["ok"] in i and "was backed up" in i for i in items), items
    assert any(jobs["failing"] in i and cfg["failure"] in i for i in items), items
    assert not any(jobs["paused"] in i or jobs["stale"] in i for i in items), items
    b.screenshot(os.path.join(SHOTS, "client-site.png"))
    assert http("/api/v1/status", cfg["client_token"])[0] == 403
    assert http("/api/v1/dashboard?site=other", cfg["client_token"])[0] == 403
    code, out = http("/api/v1/dashboard", cfg["client_token"])
    assert code == 200 and [s["name"] for s in json.loads(out)["sites"]] == [site], out
    checks += 2

    # The page token browses nothing; the token n1's operator gave the site
    # for n1 (--site-browse) opens the same page with the backups of n1, and
    # of no other node of the site.
    li = lambda path: "ul.plain li[data-path=" + json.dumps(path) + "]"  # noqa: E731
    assert not b.eval(f"!!document.querySelector({json.dumps(li(jobs['ok']) + ' button.browse')})")
    code, out = http("/api/v1/files?node=" + cfg["ok_node"] + "&path=" + urllib.request.quote(jobs["ok"], safe=""),
                     cfg["client_token"])
    assert code == 403 and "page token does not browse" in out, (code, out)
    sign_in(b, cfg["browse_token"], URL + "/site/" + site)
    b.wait("document.body.dataset.view === 'client'")
    b.wait(f"document.querySelector({json.dumps(li(jobs['ok']) + ' button.browse')})")
    assert not b.eval(f"!!document.querySelector({json.dumps(li(jobs['failing']) + ' button.browse')})")
    b.eval(f"document.querySelector({json.dumps(li(jobs['ok']) + ' button.browse')}).click()")
    b.wait("document.querySelector('#files tr[data-path=\"data.txt\"]')")
    b.eval("window.backmeshDownloaded = null")
    b.eval("document.querySelector('#files tr[data-path=\"data.txt\"] button.download').click()")
    b.wait("!!window.backmeshDownloaded || !!document.querySelector('#action-status.error')")
    assert b.eval("!!window.backmeshDownloaded"), text(b, "#action-status")
    got = b.eval("window.backmeshDownloaded.text()")
    assert got == cfg["ok_content"], got
    b.screenshot(os.path.join(SHOTS, "client-browser.png"))
    quoted = urllib.request.quote(jobs["failing"], safe="")
    for route in ["/api/v1/files?node=" + cfg["failing_node"] + "&path=" + quoted,
                  "/api/v1/fetch?node=" + cfg["failing_node"] + "&path=" + quoted]:
        code, out = http(route, cfg["browse_token"])
        assert code == 403 and "browses here the backups of node" in out, (route, code, out)
    assert http("/api/v1/run", cfg["browse_token"], "POST", {"node": cfg["ok_node"], "path": jobs["ok"]})[0] == 403
    assert http("/api/v1/status", cfg["browse_token"])[0] == 403
    checks += 2
finally:
    b.close()

# /metrics parses as Prometheus text and says what the page says.
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

code, body = http("/metrics", cfg["viewer"])
assert code == 200, (code, body)
families = {f.name: f for f in text_string_to_metric_families(body)}
by_state = {s.labels["state"]: s.value for s in families["backmesh_jobs"].samples}
assert by_state["failing"] == 1 and by_state["paused"] == 1 and by_state["stale"] == 1 and by_state["ok"] == 1, by_state
for name in ["backmesh_job_last_success_timestamp_seconds", "backmesh_node_stored_bytes", "backmesh_replication_backlog",
             "backmesh_node_up", "backmesh_node_free_bytes"]:
    assert name in families, (name, list(families))
assert http("/metrics", None)[0] == 401
checks += 1
print(f"dashboard: {checks} checks passed; screenshots in {SHOTS}; run now said: {status}")
