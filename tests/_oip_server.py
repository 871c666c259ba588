"""A small Open Inference Protocol v2 (REST) server for a TorchScript segmentation model, with fault switches: the
server of tests/test_remote_teachers.py (in a thread) and of bench/remote_teacher.py (in a process of its own).

Why not KServe's or MLServer's own server: neither installs against constraints.txt (kserve needs protobuf < 7,
older kservers pin starlette, pandas, numpy < 2 or fastapi; mlserver resolves only to 1.2.1, which imports pydantic
v1's BaseSettings, an error under pydantic 2; docs/decisions.md, 62). This one follows the KServe v2 REST spec
as they serve it: ``GET /v2/health/ready``, ``GET /v2/models/{name}[/versions/{v}]`` (metadata: versions,
inputs, outputs with ``-1`` for a variable dimension), ``POST /v2/models/{name}[/versions/{v}]/infer`` with JSON
tensors (row-major ``data``), errors as ``{"error": ...}``, built with the installed FastAPI and uvicorn.

Faults (``Faults``) are chosen by the images a request holds, so a test knows which cases they hit: an image
whose mean is above a threshold makes its request answer 500, answer late, or answer the wrong shape.

    python tests/_oip_server.py model.ts --port 8000 --classes 2 --size 32 32
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import (  # at module level: FastAPI reads the endpoints' annotations from here
    FastAPI,
    Request,
)
from fastapi.responses import JSONResponse


@dataclass
class Faults:
    """``token``: required ``Authorization: Bearer`` value; a request holding an image whose mean is above
    ``fail_above`` answers 500, above ``slow_above`` answers after ``slow_s`` seconds, above ``shape_above`` answers
    half the spatial size; ``wrong_shape``: every answer is half the spatial size."""

    token: str | None = None
    fail_above: float | None = None
    slow_above: float | None = None
    slow_s: float = 0.0
    shape_above: float | None = None
    wrong_shape: bool = False


@dataclass
class Served:
    """A model served: its request log (``(method, path, status, images)`` per request) and, once started, its
    ``url`` and ``stop``."""

    log: list[tuple[str, str, int, int]] = field(default_factory=list)
    url: str = ""
    stop: Any = None

    def count(self, path_part: str, status: int | None = None) -> int:
        return sum(1 for _, p, s, _ in self.log if path_part in p and (status is None or s == status))


def oip_app(model_file: str | Path, num_classes: int, size: tuple[int, ...], in_channels: int = 1, name: str = "seg",
            versions: tuple[str, ...] = ("1",), faults: Faults | None = None, served: Served | None = None,
            input_shape: list[int] | None = None, threads: int | None = None) -> Any:
    """A FastAPI app serving the TorchScript ``model_file`` as model ``name`` over OIP v2 REST.
    ``input_shape`` overrides the input shape its metadata declares (to test a client's checks)."""
    from starlette.concurrency import run_in_threadpool

    if threads:
        torch.set_num_threads(threads)
    net = torch.jit.load(str(model_file)).eval()
    faults = faults or Faults()
    served = served if served is not None else Served()
    app = FastAPI()
    in_meta = {"name": "image", "datatype": "FP32", "shape": input_shape or [-1, in_channels, *size]}
    out_meta = {"name": "logits", "datatype": "FP32", "shape": [-1, num_classes, *size]}

    def refuse(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if faults.token and request.headers.get("authorization") != f"Bearer {faults.token}":
            response = refuse(401, "Unauthorized")
        else:
            response = await call_next(request)
        images = int(response.headers.get("x-images", 0))
        served.log.append((request.method, request.url.path, response.status_code, images))
        return response

    @app.get("/v2/health/live")
    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"live": True, "ready": True}

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "nakt-test-oip", "version": "2", "extensions": []}

    def known(model: str, version: str | None) -> bool:
        return model == name and (version is None or version in versions)

    @app.get("/v2/models/{model}")
    @app.get("/v2/models/{model}/versions/{version}")
    async def metadata(model: str, version: str | None = None) -> Any:
        if not known(model, version):
            return refuse(404, f"Model {model} (version {version}) not found")
        return {"name": name, "versions": list(versions), "platform": "pytorch_torchscript", "inputs": [in_meta],
                "outputs": [out_meta]}

    @app.post("/v2/models/{model}/infer")
    @app.post("/v2/models/{model}/versions/{version}/infer")
    async def infer(model: str, request: Request, version: str | None = None) -> Any:
        if not known(model, version):
            return refuse(404, f"Model {model} (version {version}) not found")
        try:
            body = json.loads(await request.body())
            (tensor,) = body["inputs"]
            if tensor["name"] != in_meta["name"] or tensor["datatype"] != "FP32":
                return refuse(400, f"unexpected input {tensor['name']!r} {tensor['datatype']}")
            shape = [int(s) for s in tensor["shape"]]
            x = np.asarray(tensor["data"], np.float32).reshape(shape)
            wanted = [o["name"] for o in body.get("outputs", [])]
        except (ValueError, KeyError, TypeError) as err:
            return refuse(400, f"bad request: {err}")
        if list(x.shape[1:]) != [in_channels, *size] or any(w != out_meta["name"] for w in wanted):
            return refuse(400, f"input shape {list(x.shape)} or outputs {wanted} do not fit the model")
        means = x.reshape(len(x), -1).mean(1)

        def hit(threshold: float | None) -> bool:
            return threshold is not None and bool((means > threshold).any())

        if hit(faults.slow_above):
            await asyncio.sleep(faults.slow_s)
        if hit(faults.fail_above):
            return refuse(500, "injected failure")
        out = await run_in_threadpool(_predict, model_fn=net, x=x)
        if faults.wrong_shape or hit(faults.shape_above):
            out = out[..., ::2, ::2]
        return JSONResponse({"model_name": name, "model_version": version or versions[-1], "id": body.get("id", ""),
                             "outputs": [{"name": out_meta["name"], "shape": list(out.shape), "datatype": "FP32",
                                          "data": out.ravel().tolist()}]},
                            headers={"x-images": str(len(x))})

    return app


def _predict(model_fn: Any, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return np.ascontiguousarray(model_fn(torch.from_numpy(x)).numpy(), dtype=np.float32)


def serve_in_thread(app: Any, served: Served | None = None, certfile: str | None = None,
                    keyfile: str | None = None) -> Served:
    """Serve ``app`` with uvicorn on a free port of 127.0.0.1 in a daemon thread; ``served.stop()`` ends it."""
    import uvicorn

    served = served if served is not None else Served()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # force_exit in stop() skips waiting for open connections: a client's idle keep-alive connection (or a TLS
    # handshake it gave up) would hold the stop for uvicorn's whole graceful wait.
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off", ssl_certfile=certfile,
                                           ssl_keyfile=keyfile, timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = server.force_exit = True  # drop what is in flight (a test's slow answers)
        thread.join(10)
        sock.close()

    served.url = f"{'https' if certfile else 'http'}://127.0.0.1:{port}"
    served.stop = stop
    return served


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a TorchScript file")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--size", type=int, nargs="+", default=[32, 32])
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--name", default="seg")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the server")
    args = parser.parse_args()
    app = oip_app(args.model, args.classes, tuple(args.size), args.in_channels, args.name, threads=args.threads)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="error")


if __name__ == "__main__":
    main()
