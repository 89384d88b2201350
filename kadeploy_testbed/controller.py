"""The testbed controller: one background process per testbed that owns nodes and BMCs.

Started by ``kadeploy-testbed up`` as ``python -m kadeploy_testbed.controller DIR``. It attaches
the nodes' disks to loop devices, creates network namespaces (``--netns``), starts one BMC per
node, boots every node into its prod env and then serves requests on ``DIR/control.sock``: one
JSON object per line in, one JSON object per line out (``{"op": "status"}``, ``{"op": "power",
"node": N, "action": on|off|cycle|reset|status}``, ``{"op": "fault", "node": N, "kind": K}``,
``{"op": "reset", "nodes": [...]}``, ``{"op": "shutdown"}``). SIGTERM stops it in order.
Everything it creates is recorded in ``DIR/state.json`` before it is created, so that ``down``
can undo it after a crash.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
from dataclasses import asdict
from typing import Any

from kadeploy_testbed import disks, netns
from kadeploy_testbed.bmc import BmcError, BmcHandle, start_bmc
from kadeploy_testbed.firmware import prod_cmdline
from kadeploy_testbed.layout import BMC_PORT, BMC_USER, Layout
from kadeploy_testbed.node import FaultError, NodeRunner
from kadeploy_testbed.nodefiles import BootSpec
from kadeploy_testbed.state import TestbedConfig, load_state, record, update_state

logger = logging.getLogger(__name__)

POWER_ACTIONS = ("on", "off", "cycle", "reset", "soft", "status")


class RequestError(Exception):
    """A control request is wrong; the message goes back to the client."""


class Controller:
    """Nodes, BMCs and the control socket of one testbed."""

    def __init__(self, layout: Layout, config: TestbedConfig) -> None:
        self.layout = layout
        self.config = config
        self.nodes: dict[str, NodeRunner] = {}
        self.bmcs: list[BmcHandle] = []
        self.stopped = threading.Event()
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._stop_lock = threading.Lock()
        self._stopping = False

    # -- start and stop ------------------------------------------------------------------------

    def start(self) -> None:
        specs = self.config.specs()
        deploy_kernel = self.layout.deploy_kernel.read_bytes()
        password = self.layout.ipmi_password.read_text().strip()
        settings = self.config.boot_settings()
        for spec in specs:
            disk: dict[str, str] = {}
            for partition in (None, 1, 2, 3, 4):
                path = self.layout.disk_file(spec.name, partition)
                device = disks.attach(path)
                record(self.layout, "loops", device)
                disk[path.name] = device
            if spec.netns:
                record(self.layout, "netns", spec.netns)
                assert self.config.rate is not None
                netns.setup_node(spec, self.config.rate)
            runner = NodeRunner(self.layout, spec, settings, disk, deploy_kernel)
            self.nodes[spec.name] = runner
            try:
                self.bmcs.append(
                    start_bmc(spec.bmc, BMC_PORT, BMC_USER, password, runner, name=spec.name)
                )
            except BmcError as error:
                raise RuntimeError(f"controller: {error}") from None
        for runner in self.nodes.values():
            runner.power_on(direct=BootSpec(env="prod", cmdline=prod_cmdline()))
        self._serve_socket()
        update_state(self.layout, lambda s: s.update(controller_ready=True))
        logger.info("controller ready with %d nodes", len(self.nodes))

    def stop(self) -> None:
        with self._stop_lock:
            if self._stopping:
                return
            self._stopping = True
        logger.info("controller stopping")
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for bmc in self.bmcs:
            bmc.stop()
        for runner in self.nodes.values():
            runner.power_off("testbed down")
        for runner in self.nodes.values():
            runner.stop()
        for runner in self.nodes.values():
            if runner.spec.netns:
                netns.teardown_node(runner.spec)
        if self.config.netns:
            netns.sweep([runner.spec for runner in self.nodes.values()])
        for runner in self.nodes.values():
            for device in runner.disk.values():
                disks.detach(device)
        self.layout.control_socket.unlink(missing_ok=True)
        update_state(self.layout, lambda s: s.update(controller_ready=False, loops=[], netns=[]))
        logger.info("controller stopped")
        self.stopped.set()

    # -- requests ------------------------------------------------------------------------------

    def _runner(self, name: object) -> NodeRunner:
        if not isinstance(name, str) or name not in self.nodes:
            valid = ", ".join(self.nodes)
            raise RequestError(f"unknown node {name!r}; nodes: {valid}")
        return self.nodes[name]

    def handle(self, request: dict[str, Any]) -> Any:
        op = request.get("op")
        if op == "status":
            return [asdict(runner.status()) for runner in self.nodes.values()]
        if op == "power":
            runner = self._runner(request.get("node"))
            action = request.get("action")
            if action not in POWER_ACTIONS:
                raise RequestError(
                    f"unknown power action {action!r}; valid: {', '.join(POWER_ACTIONS)}"
                )
            if action != "status":
                getattr(runner, f"power_{action}")()
            return "on" if runner.is_on() else "off"
        if op == "fault":
            runner = self._runner(request.get("node"))
            try:
                runner.fault(str(request.get("kind")))
            except (FaultError, disks.DiskError, netns.NetnsError) as error:
                raise RequestError(str(error)) from None
            return asdict(runner.status())
        if op == "reset":
            names = request.get("nodes") or list(self.nodes)
            runners = [self._runner(name) for name in names]
            for runner in runners:
                runner.reset()
            return [r.spec.name for r in runners]
        if op == "shutdown":
            threading.Thread(target=self.stop, name="controller-stop").start()
            return "stopping"
        raise RequestError(f"unknown op {op!r}; valid: status, power, fault, reset, shutdown")

    def _serve_socket(self) -> None:
        controller = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline()
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise RequestError("a request is a JSON object")
                    reply = {"ok": True, "result": controller.handle(request)}
                except (ValueError, RequestError) as error:
                    reply = {"ok": False, "error": str(error)}
                except Exception as error:
                    logger.exception("control request %r failed", line)
                    reply = {"ok": False, "error": f"controller error: {error}"}
                self.wfile.write(json.dumps(reply).encode() + b"\n")

        path = self.layout.control_socket
        path.unlink(missing_ok=True)
        server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        server.daemon_threads = True
        path.chmod(0o600)
        self._server = server
        threading.Thread(target=server.serve_forever, name="control-socket", daemon=True).start()


def request(layout: Layout, message: dict[str, Any], timeout: float = 30.0) -> Any:
    """Send one request to the controller of ``layout``; raise RequestError with its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(layout.control_socket))
        except OSError as error:
            raise RequestError(
                f"no testbed controller answers at {layout.control_socket} ({error.strerror}); "
                f"is the testbed up? (kadeploy-testbed up --dir {layout.root})"
            ) from None
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        reply = json.loads(data)
    except ValueError:
        raise RequestError(f"the testbed controller gave no answer to {message}") from None
    if not reply.get("ok"):
        raise RequestError(str(reply.get("error")))
    return reply.get("result")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m kadeploy_testbed.controller DIR", file=sys.stderr)
        return 2
    layout = Layout.at(args[0])
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    state = load_state(layout)
    config = TestbedConfig.from_dict(state["config"])
    update_state(layout, lambda s: s.update(controller_pid=os.getpid()))
    controller = Controller(layout, config)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=controller.stop).start())
    signal.signal(signal.SIGINT, lambda *_: threading.Thread(target=controller.stop).start())
    try:
        controller.start()
    except Exception:
        logger.exception("controller failed to start")
        controller.stop()
        return 1
    while not controller.stopped.wait(1.0):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
