r"""The page under load: concurrent gradio_client clients on the loopback address.

Each client uploads its photos one after the other, plus one corrupt file and one header bomb;
measured: p50/p95 latency per request, photos per second against the SavedModel's own in-process
rate at batch 8 (``Predictor`` on 8 photos per call, in the same run, before the load), errors
(only the corrupt and bomb uploads may get a sentence), and the server's resident memory (peak,
and the highest value while the first and while the last 100 requests ran).

The full benchmark (BUILD.md) runs the command itself as a separate process::

    nice -n 10 .venv/bin/python tests/analysis/test_page_load.py --model=models/exif_shutter \
        --photos=data/sample --clients=8 --per_client=25

``make test`` runs a small form on a tiny export, in process (no performance assertion).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BAD_PREFIX = "This "   # every refusal's sentence starts "This file ..." / "This photo ..."


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


class MemoryWatch(threading.Thread):
    """Samples a process's resident memory every ``interval`` s with the number of requests
    finished so far."""

    def __init__(self, pid: int, progress, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.progress, self.interval = pid, progress, interval
        self.samples, self._done = [], threading.Event()

    def run(self):
        while not self._done.is_set():
            self.samples.append((self.progress(), rss_bytes(self.pid)))
            self._done.wait(self.interval)

    def stop(self):
        self._done.set()
        self.join()
        self.samples.append((self.progress(), rss_bytes(self.pid)))


def in_process(model: str, photos: list[bytes], batch: int = 8,
               seconds: float = 5.0) -> tuple[float, float]:
    """(photos per second, CPU ms per photo) of the export's signature in this process,
    ``batch`` photos a call."""
    from exif_keras.serving import predictor

    model_ = predictor.Predictor.load(model)
    batches = [photos[i:i + batch] for i in range(0, len(photos) - batch + 1, batch)]
    for b in batches[:2]:
        model_(b)   # traced and warm
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        model_(batches[(done // batch) % len(batches)])
        done += batch
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return done / wall, 1000 * cpu / done


def in_process_rate(model: str, photos: list[bytes], batch: int = 8,
                    seconds: float = 5.0) -> float:
    """Photos per second of the export's signature in this process, ``batch`` photos a call."""
    return in_process(model, photos, batch, seconds)[0]


def load(url: str, pid: int, files: list[list[str]], bad: set) -> dict:
    """Every client (one list of paths each) uploads its files one after the other through its
    own gradio_client; returns the measurements."""
    from gradio_client import Client, handle_file

    finished = [0]
    lock = threading.Lock()
    # gradio_client makes a new httpx client for most of its requests, and httpx a new TLS
    # context for each (the CA bundle loaded and parsed: about a third of the client's CPU), even
    # for http://; one context shared by all clients spares that cost on the cores the server
    # shares with them (the requests and what the page does are the same).
    tls = ssl.create_default_context()
    clients = [Client(url, verbose=False, ssl_verify=tls) for _ in files]
    clients[0].predict(handle_file(files[0][0]), api_name="/estimate")   # untimed first call
    records = []

    def client(i):
        out = []
        for path in files[i]:
            start = time.perf_counter()
            try:
                headline = clients[i].predict(handle_file(path), api_name="/estimate")[0]
                error = None
            except Exception as e:  # noqa: BLE001 - counted, the benchmark carries on
                headline, error = "", f"{type(e).__name__}: {e}"
            out.append({"path": path, "seconds": time.perf_counter() - start,
                        "headline": headline, "error": error, "end": time.perf_counter()})
            with lock:
                finished[0] += 1
        return out

    watch = MemoryWatch(pid, lambda: finished[0])
    watch.start()
    server_cpu, client_cpu = cpu_seconds(pid), time.process_time()
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(files)) as pool:
        for result in pool.map(client, range(len(files))):
            records += result
    wall = time.perf_counter() - start
    server_cpu, client_cpu = cpu_seconds(pid) - server_cpu, time.process_time() - client_cpu
    watch.stop()

    total = len(records)
    good = [r for r in records if r["path"] not in bad]
    refused = [r for r in records if r["headline"].startswith(BAD_PREFIX) or r["error"]]
    latencies = np.array([r["seconds"] for r in good])
    first = [rss for n, rss in watch.samples if n <= min(100, total)]
    last = [rss for n, rss in watch.samples if n >= max(0, total - 100)]
    return {
        "clients": len(files), "requests": total, "photos": len(good), "seconds": wall,
        "photos_per_second": len(good) / wall, "requests_per_second": total / wall,
        "p50_s": float(np.percentile(latencies, 50)), "p95_s": float(np.percentile(latencies, 95)),
        "refused": len(refused),
        "refused_good": sorted({r["path"] for r in refused if r["path"] not in bad}),
        "bad_answered": sorted({r["path"] for r in records
                                if r["path"] in bad and r not in refused}),
        "bad_sentences": sorted({r["headline"] for r in refused if r["path"] in bad}),
        "exceptions": sorted({r["error"] for r in records if r["error"]}),
        "rss_peak_bytes": max(rss for _, rss in watch.samples),
        # CPU per request; in process (the small form) both are the one process's
        "server_cpu_ms_per_request": 1000 * server_cpu / total,
        "client_cpu_ms_per_request": 1000 * client_cpu / total,
        "rss_first_100_bytes": max(first), "rss_last_100_bytes": max(last),
    }


def client_files(photos: list[str], corrupt: str, bomb: str, clients: int,
                 per_client: int) -> list[list[str]]:
    """Per client ``per_client`` distinct photos (cycled when there are fewer), the corrupt file
    after a third of them and the bomb after two thirds."""
    out = []
    for c in range(clients):
        mine = [photos[(c * per_client + i) % len(photos)] for i in range(per_client)]
        mine.insert(per_client // 3, corrupt)
        mine.insert(2 * per_client // 3 + 1, bomb)
        out.append(mine)
    return out


def bad_files(folder: str, good: bytes) -> tuple[str, str]:
    sys.path.insert(0, os.path.dirname(HERE))
    from image_bombs import jpeg_header_bomb

    corrupt, bomb = os.path.join(folder, "corrupt.jpg"), os.path.join(folder, "bomb.jpg")
    with open(corrupt, "wb") as f:
        f.write(good[: len(good) // 3])
    with open(bomb, "wb") as f:
        f.write(jpeg_header_bomb(20000, 20000))
    return corrupt, bomb


# ------------------------------------------------------------------------- the small form

@pytest.mark.slow
def test_page_under_concurrent_clients_small(page_exports, tmp_path):
    pytest.importorskip("gradio", reason="the serve extra: pip install -e '.[serve]'")
    from exif_keras.analysis import page as page_lib

    from page_fixtures import photos, running, write

    export = page_exports["joint"]
    paths = sorted(write(str(tmp_path), {**photos(1), **{
        f"{n}-2{os.path.splitext(n)[1]}": d for n, d in photos(2).items()}}).values())
    with open(paths[0], "rb") as f:
        corrupt, bomb = bad_files(str(tmp_path), f.read())
    files = client_files(paths, corrupt, bomb, clients=4, per_client=4)
    rate = in_process_rate(export, [open(p, "rb").read() for p in paths], seconds=0.5)
    with running(page_lib.build(page_lib.Page(export))) as url:
        result = load(url, os.getpid(), files, {corrupt, bomb})
    assert rate > 0
    assert result["requests"] == 4 * 6 and result["photos"] == 16
    assert result["refused"] == 8 and not result["refused_good"] and not result["bad_answered"]
    assert not result["exceptions"]
    assert len(result["bad_sentences"]) == 2 and all(
        s.endswith(".") and "\n" not in s for s in result["bad_sentences"])
    assert 0 < result["p50_s"] <= result["p95_s"]
    assert result["rss_peak_bytes"] >= result["rss_last_100_bytes"] > 0
    assert result["server_cpu_ms_per_request"] > 0


# ------------------------------------------------------------------------- the full benchmark

def wait_for(url: str, process, seconds: float = 180.0) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"no page at {url} after {seconds:.0f} s")


def paper_export(folder: str) -> str:
    """An export of the paper's configuration (VGG16 to block3_conv3, k = 8 patches of 128 px,
    a binary shutter head) with random weights, for timing the page where the model does the work
    of the paper's (no ImageNet download; the timing does not depend on the weights)."""
    import keras

    from exif_keras.common import labels
    from exif_keras.modeling import model as model_lib
    from exif_keras.modeling import run_folder
    from exif_keras.serving import exporter

    heads = labels.task_specs("shutter", "binary")
    config = model_lib.ModelConfig(heads=(model_lib.HeadConfig("shutter", 2),), num_patches=8,
                                   patch_size=128, backbone="vgg16", backbone_weights=None)
    run_dir = os.path.join(folder, "run")
    run_folder.save(run_dir, config, heads, {"field": "shutter", "task": "binary"})
    keras.utils.set_random_seed(0)
    model_lib.build_model(config).save_weights(run_folder.path(run_dir, run_folder.BEST_WEIGHTS))
    return exporter.export_model(run_dir, os.path.join(folder, "models", "exif_shutter"),
                                 write_config=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="the page under load (BUILD.md)")
    parser.add_argument("--model", default="models/exif_shutter",
                        help="an export; 'paper': the paper's VGG16 configuration, random "
                             "weights, built in a temporary folder")
    parser.add_argument("--photos", default="data/sample")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per_client", type=int, default=25)
    parser.add_argument("--port", type=int, default=7861)
    parser.add_argument("--max_batch_size", type=int, default=8)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    import tempfile

    if args.model == "paper":
        args.model = paper_export(tempfile.mkdtemp(prefix="paper_export_"))

    photos = sorted(os.path.join(args.photos, n) for n in os.listdir(args.photos)
                    if n.lower().endswith(".jpg"))[: args.clients * args.per_client]
    data = [open(p, "rb").read() for p in photos]
    # measured before and after the load, the higher rate kept: the machine may be shared
    rate, model_cpu = in_process(args.model, data)
    print(f"in-process SavedModel, batch 8: {rate:.1f} photos/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        corrupt, bomb = bad_files(tmp, data[0])
        files = client_files(photos, corrupt, bomb, args.clients, args.per_client)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        log = open(os.path.join(tmp, "server.log"), "w")
        server = subprocess.Popen(
            [sys.executable, "-m", "exif_keras.serve", f"--model={args.model}",
             f"--port={args.port}", f"--max_batch_size={args.max_batch_size}",
             "--examples=/nonexistent"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{args.port}/"
            wait_for(url, server)
            rss_start = rss_bytes(server.pid)
            result = load(url, server.pid, files, {corrupt, bomb})
            result["rss_peak_hwm_bytes"] = rss_bytes(server.pid, "VmHWM")
            result["rss_ready_bytes"] = rss_start
        finally:
            server.terminate()
            server.wait(30)
    rate_after, cpu_after = in_process(args.model, data)
    print(f"in-process SavedModel, batch 8, after the load: {rate_after:.1f} photos/s")
    rate, model_cpu = max((rate, model_cpu), (rate_after, cpu_after))
    result["in_process_photos_per_second"] = rate
    result["in_process_cpu_ms_per_photo"] = model_cpu
    # CPU per answered photo through the page, server and clients (bad files included)
    page_cpu = ((result["server_cpu_ms_per_request"] + result["client_cpu_ms_per_request"])
                * result["requests"] / result["photos"])
    result["page_cpu_ms_per_photo"] = page_cpu
    cores = len(os.sched_getaffinity(0))
    ceiling = result["ceiling_photos_per_second"] = 1000 * cores / page_cpu
    result["ratio"] = result["photos_per_second"] / rate
    mb = 1024 * 1024
    print(f"{result['clients']} clients, {result['requests']} requests ({result['photos']} "
          f"photos, {result['requests'] - result['photos']} corrupt or bomb) in "
          f"{result['seconds']:.1f} s\n"
          f"latency p50 {result['p50_s'] * 1000:.0f} ms, p95 {result['p95_s'] * 1000:.0f} ms\n"
          f"{result['photos_per_second']:.1f} photos/s through the page = {result['ratio']:.2f}x "
          f"the in-process {rate:.1f} photos/s at batch 8\n"
          f"refused {result['refused']} (good photos refused: {len(result['refused_good'])}; "
          f"bad ones answered: {len(result['bad_answered'])}; exceptions: "
          f"{len(result['exceptions'])}): {result['bad_sentences']}\n"
          f"CPU per request: server {result['server_cpu_ms_per_request']:.0f} ms, the clients "
          f"{result['client_cpu_ms_per_request']:.0f} ms; per photo through the page (server "
          f"and clients) {page_cpu:.0f} ms, in process {model_cpu:.0f} ms "
          f"({model_cpu / page_cpu:.2f}x); through the page {cores} otherwise idle cores could "
          f"pass at most {ceiling:.1f} photos/s\n"
          f"server RSS: ready {result['rss_ready_bytes'] / mb:.0f} MiB, peak "
          f"{result['rss_peak_hwm_bytes'] / mb:.0f} MiB (VmHWM), highest over the first 100 "
          f"requests {result['rss_first_100_bytes'] / mb:.0f} MiB, over the last 100 "
          f"{result['rss_last_100_bytes'] / mb:.0f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if not (result["refused_good"] or result["bad_answered"]
                     or result["exceptions"]) else 1


if __name__ == "__main__":
    sys.exit(main())
