"""One deployment on the test bed behind one real proxy, for the edge tests: the auth service (with
`auth.proxy` set for that proxy), the template and instance services, a template published through the
template service whose auth-url points at the auth service directly (`http://127.0.0.1:<port>/auth?rh=$host`,
no hairpin through the proxy), alice's and bob's instances, and the proxy in front (the nginx stand-in
rendered from the namespace's Ingress objects, or the test bed's Traefik reading them itself)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes_asyncio import client

from aigc_gateway.api.v1 import instance_pb2, instance_pb2_grpc, template_pb2, template_pb2_grpc
from tests.auth.stack import DOMAIN, AuthStack, start_auth_stack
from tests.plugins.auth_stack import free_port
from tests.plugins.gateway import bearer, make_settings
from tests.plugins.kube import SAMPLES, api_client, wait_for

from .conftest import PodLog, raw, request

COOKIE = "aigc_session"
IDENTITY = "X-Auth-Request-User,X-Auth-Request-Email,Cookie"


@dataclass
class Instance:
    name: str  # namespaces/<ns>/templates/<t>/instances/<id>
    ident: int
    host: str  # the routed host (no port)
    path: str  # "/" or the instance's path prefix
    pod: str


@dataclass
class Scene:
    proxy: str  # "nginx" or "traefik"
    port: int  # the proxy's HTTP port
    stack: AuthStack
    instances: instance_pb2_grpc.InstanceServiceStub
    cookies: dict[str, str]  # user -> session cookie value
    pods: PodLog
    kubeconfig: str
    templates: template_pb2_grpc.TemplateServiceStub
    admin: tuple[tuple[str, str], ...]
    auth_url: str
    signin_url: str
    nginx: Any = None
    tag: str = ""  # unique per scene: Traefik reads every namespace's Ingresses, so hosts must not repeat
    services: Any = None  # the instance service's gateway (tests reach its service object through it)

    def host(self, pattern: str) -> str:
        """``pattern`` (e.g. ``instances<id>-cpu.<domain>``) made this scene's own: its first label gets the
        scene's tag, so an Ingress left by an earlier test (namespaces go away seconds after a test) never
        shares a host with this one's."""
        first, dot, rest = pattern.partition(".")
        return f"{first}-{self.tag}{dot}{rest}" if self.tag and not first.endswith(f"-{self.tag}") else pattern

    def meta(self, user: str) -> tuple[tuple[str, str], ...]:
        return (("cookie", f"{COOKIE}={self.cookies[user]}"),)

    def url(self, host: str, path: str = "/") -> str:
        return f"http://{host}:{self.port}{path}"

    async def get(self, host: str, path: str = "/", user: str | None = None,
                  extra: list[tuple[str, str]] | None = None):
        headers = [("Host", f"{host}:{self.port}")]
        if user:
            headers.append(("Cookie", f"{COOKIE}={self.cookies[user]}"))
        return await raw(self.port, request(path, headers + (extra or [])))


def manifest(namespace: str, auth_url: str, signin_url: str, *, host: str, path: str, path_type: str,
             name: str, identity: bool = True) -> str:
    """The reference CPU template, its network settings pointed at this test's auth service."""
    obj = yaml.safe_load((SAMPLES / "stable-diffusion-cpu.yaml").read_text().replace("${DOMAIN}", DOMAIN))
    obj["metadata"].update(name=name, namespace=namespace)
    conf = [c for c in obj["spec"]["network"]["networkConf"] if c["name"] not in ("Annotation", "Host", "Path",
                                                                                   "PathType")]
    conf += [{"name": "Host", "value": host}, {"name": "Path", "value": path},
             {"name": "PathType", "value": path_type},
             {"name": "Annotation", "value": f"nginx.ingress.kubernetes.io/auth-url: {auth_url}"},
             {"name": "Annotation", "value": f"nginx.ingress.kubernetes.io/auth-signin: {signin_url}"}]
    if identity:
        conf.append({"name": "Annotation", "value": f"nginx.ingress.kubernetes.io/auth-response-headers: {IDENTITY}"})
    obj["spec"]["network"]["networkConf"] = conf
    return yaml.safe_dump(obj, sort_keys=False)


async def start_scene(proxy: str, *, testbed, k8s_namespace: str, edge, start_gateway, start_oidc_provider,
                      database_url: str, issuer, browser, ingress_nginx, users: tuple[str, ...] = ("alice", "bob"),
                      instance: dict[str, Any] | None = None, auth: dict[str, Any] | None = None) -> Scene:
    """``users`` sign in (each gets a session cookie); ``instance``: settings of the instance service; ``auth``:
    more settings of the auth service (``allow_admin_access``)."""
    auth_port = free_port()
    auth_url = f"http://127.0.0.1:{auth_port}/auth?rh=$host"
    signin = f"http://dashboard.{DOMAIN}:{auth_port}/sign-in"
    # The browser signs in on the auth service directly (its own port); instances go through the proxy.
    stack = await start_auth_stack(
        start_gateway=start_gateway, start_oidc_provider=start_oidc_provider, database_url=database_url,
        issuer=issuer, front_port=auth_port, kubeconfig=str(testbed.kubeconfig), namespaces=[k8s_namespace],
        auth_overrides={"http_listen": f"127.0.0.1:{auth_port}", "proxy": proxy, **(auth or {})},
        template={"auth_url": auth_url, "auth_signin_url": signin}, **({"instance": instance} if instance else {}))
    services = await start_gateway("instance", settings=stack.gateway.runtime.settings)
    # The template service with the test issuer's admin tokens (the stack's OIDC issuer is the provider).
    publisher = await start_gateway("template", settings=make_settings(
        database_url, issuer, namespaces=[k8s_namespace], kubernetes={"kubeconfig": str(testbed.kubeconfig)},
        template={"auth_url": auth_url, "auth_signin_url": signin}))
    cookies = {}
    for user in users:
        b = browser()
        await b.sign_in(stack.url(f"dashboard.{DOMAIN}", "/sign-in"), user)
        cookies[user] = b.cookie(COOKIE)
    port = edge.traefik_port if proxy == "traefik" else 0
    scene = Scene(proxy, port, stack, instance_pb2_grpc.InstanceServiceStub(services.channel("instance")), cookies,
                  PodLog(edge.pod_log, k8s_namespace), str(testbed.kubeconfig),
                  template_pb2_grpc.TemplateServiceStub(publisher.channel("template")),
                  bearer(issuer.mint("root-admin", roles=["admin"])), auth_url, signin)
    scene.services = services
    scene.tag = hashlib.sha256(k8s_namespace.encode()).hexdigest()[:6]
    if proxy == "nginx":
        scene.nginx = ingress_nginx(testbed.kubeconfig, k8s_namespace)
        scene.port = scene.nginx.port
    await publish(scene, "sd", f"instances<id>-cpu.{DOMAIN}", "/", "ImplementationSpecific")
    return scene


async def publish(scene: Scene, name: str, host: str, path: str, path_type: str,
                  identity: bool = True) -> template_pb2.TemplateChange:
    """Publish a template through the template service (host and path may carry <id>; `identity`: the
    manifest carries `auth-response-headers` naming the identity headers — without it, the template
    service adds it). Returns the template service's answer (the template as written, its warnings)."""
    host = scene.host(host)
    return await scene.templates.CreateTemplate(template_pb2.CreateTemplateRequest(
        parent=f"namespaces/{scene.pods.namespace}", source=template_pb2.TemplateSource(manifest=manifest(
            scene.pods.namespace, scene.auth_url, scene.signin_url, host=host, path=path, path_type=path_type,
            name=name, identity=identity))), metadata=scene.admin)


async def install(scene: Scene, user: str, template: str = "sd", host: str = f"instances<id>-cpu.{DOMAIN}",
                  path: str = "/") -> Instance:
    """`user` installs an instance; returns once the proxy routes its host (and path) to its pod."""
    ns, host = scene.pods.namespace, scene.host(host)
    created = await scene.instances.CreateInstance(instance_pb2.CreateInstanceRequest(
        parent=f"namespaces/{ns}/templates/{template}"), metadata=scene.meta(user))
    ident = int(created.name.rsplit("/", 1)[1])
    host, path = host.replace("<id>", str(ident)), path.replace("<id>", str(ident))
    pod = f"{template}-{ident}"

    async def ready_endpoint() -> bool:
        async with api_client(scene.kubeconfig) as api:
            ings = await client.NetworkingV1Api(api).list_namespaced_ingress(ns)
            slices = await client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
                ns, label_selector=f"kubernetes.io/service-name={pod}")
            return any(i.metadata.name == pod for i in ings.items) and any(
                e.conditions.ready and e.target_ref and e.target_ref.name == pod
                for s in slices.items for e in s.endpoints or [])
    await wait_for(ready_endpoint, timeout=60, what=f"Ingress and ready endpoint of {pod}")
    await wait_for(lambda: scene.stack.service.owners.lookup(host, path) is not None, timeout=10,
                   what=f"the auth service's route for {host}{path}")
    found = scene.stack.service.owners.lookup(host, path)
    await wait_for(lambda: scene.stack.service.owners.owner(found) == user, timeout=10, what=f"{user} owns {pod}")
    if scene.nginx is not None:
        await scene.nginx.sync()

    async def routed() -> bool:  # Traefik learns the Ingress on its own, a moment later
        reply = await scene.get(host, path, user=user)
        return reply.status == 200 and reply.json()["pod"] == pod
    await wait_for(routed, timeout=30, interval=0.2, what=f"{scene.proxy} routes {host}{path} to {pod}")
    return Instance(created.name, ident, host, path, pod)


def received(reply) -> dict[str, Any]:
    """What the pod's backend saw (its JSON answer)."""
    return json.loads(reply.body)
