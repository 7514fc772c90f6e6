"""The deploy checks catch what they are for: each is shown passing on the
shipped files and failing on a copy broken the way a person would break it.
Run by scripts/check-deploy (python3 -m unittest)."""

import copy
import tomllib
import unittest

import jsonschema
import kubernetes_validate
import yaml

import check_deploy as cd


def shipped():
    kust = yaml.safe_load((cd.K8S / "kustomization.yaml").read_text())
    deploy = yaml.safe_load((cd.K8S / "deployment.yaml").read_text())
    hpa = yaml.safe_load((cd.K8S / "hpa.yaml").read_text())
    gateway = tomllib.loads((cd.K8S / "ballast.toml").read_text())
    rules = yaml.safe_load((cd.K8S / "prometheus-adapter" / "rules.yaml").read_text())["rules"]
    return kust, deploy, hpa, gateway, rules


class Deployment(unittest.TestCase):
    def setUp(self):
        kust, self.deploy, _, self.gateway, _ = shipped()
        self.cm = kust["configMapGenerator"][0]["name"]

    def problems(self):
        return cd.deployment_problems(self.deploy, self.gateway, self.cm)

    def test_shipped_agrees_with_its_config(self):
        self.assertEqual(self.problems(), [])

    def test_termination_grace_must_cover_the_drain(self):
        self.deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30
        self.assertIn("does not exceed preStop + drain_delay + grace_period", " ".join(self.problems()))

    def test_pre_stop_matches_drain_delay(self):
        self.gateway["server"]["drain_delay"] = "3s"
        self.assertIn("preStop sleeps 5 s, server.drain_delay is 3 s", self.problems())

    def test_probes_use_their_endpoints(self):
        cd.container(self.deploy)["readinessProbe"]["httpGet"]["path"] = "/healthz"
        self.assertIn("readinessProbe is not GET /readyz on the admin port", self.problems())

    def test_every_key_the_config_reads_comes_from_a_secret(self):
        c = cd.container(self.deploy)
        c["env"] = [e for e in c["env"] if e["name"] != "DEEPSEEK_API_KEY"]
        self.assertIn("pool deepseek reads DEEPSEEK_API_KEY, which no Secret provides", self.problems())

    def test_admin_port_matches_the_config(self):
        self.gateway["admin"]["listen"] = "127.0.0.1:9191"
        p = " ".join(self.problems())
        self.assertIn("admin.listen says 9191", p)
        self.assertIn("not on all interfaces", p)

    def test_read_only_root_needs_a_volume_for_the_upgrade_socket(self):
        c = cd.container(self.deploy)
        c["volumeMounts"] = [m for m in c["volumeMounts"] if m["mountPath"] != "/tmp"]
        self.assertIn("upgrade_sock", " ".join(self.problems()))


class Autoscaler(unittest.TestCase):
    def setUp(self):
        _, _, self.hpa, _, self.rules = shipped()

    def test_shipped_has_the_seed_numbers(self):
        self.assertEqual(cd.hpa_problems(self.hpa, self.rules), [])

    def test_replica_bounds(self):
        self.hpa["spec"]["minReplicas"] = 1
        self.assertIn("replicas 1..10, not 2..10", cd.hpa_problems(self.hpa, self.rules))

    def test_the_pods_metric_is_one_the_adapter_serves(self):
        self.hpa["spec"]["metrics"][1]["pods"]["metric"]["name"] = "ballast_rps"
        self.assertIn("not served by the prometheus-adapter rules", " ".join(cd.hpa_problems(self.hpa, self.rules)))

    def test_cpu_target(self):
        self.hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] = 80
        self.assertIn("no CPU utilisation target of 70 %", cd.hpa_problems(self.hpa, self.rules))


class Schemas(unittest.TestCase):
    def test_strict_kubernetes_schema_refuses_unknown_fields(self):
        _, deploy, _, _, _ = shipped()
        bad = copy.deepcopy(deploy)
        cd.container(bad)["readinesProbe"] = cd.container(bad).pop("readinessProbe")
        kubernetes_validate.validate(deploy, cd.KUBERNETES_VERSION, strict=True)
        with self.assertRaises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, cd.KUBERNETES_VERSION, strict=True)

    def test_compose_schema_refuses_unknown_service_keys(self):
        compose = yaml.safe_load((cd.DEPLOY / "compose" / "compose.yaml").read_text())
        validator = jsonschema.Draft201909Validator(cd.compose_schema())
        self.assertEqual(list(validator.iter_errors(compose)), [])
        compose["services"]["ballast"]["port"] = ["8080:8080"]
        self.assertNotEqual(list(validator.iter_errors(compose)), [])

    def test_compose_backends_are_services(self):
        compose = yaml.safe_load((cd.DEPLOY / "compose" / "compose.yaml").read_text())
        gateway = tomllib.loads((cd.DEPLOY / "compose" / "ballast.toml").read_text())
        here = cd.DEPLOY / "compose"
        self.assertEqual(cd.compose_problems(compose, here, gateway), [])
        del compose["services"]["sim-3"]
        self.assertIn("pool local names sim-3, which is not a compose service",
                      cd.compose_problems(compose, here, gateway))


class Dockerfile(unittest.TestCase):
    def setUp(self):
        self.text = (cd.ROOT / "Dockerfile").read_text()

    def test_shipped_keeps_its_promises(self):
        self.assertEqual(cd.dockerfile_problems(self.text), [])

    def test_root_user(self):
        text = self.text.replace("USER 10001:10001", "USER root")
        self.assertIn("the runtime stage does not switch to a non-root USER", cd.dockerfile_problems(text))

    def test_health_check_and_stop_signal(self):
        text = self.text.replace("HEALTHCHECK", "# HEALTHCHECK").replace("STOPSIGNAL SIGTERM", "")
        p = cd.dockerfile_problems(text)
        self.assertIn("no STOPSIGNAL SIGTERM", p)
        self.assertIn("no HEALTHCHECK through `ballast probe` (/healthz)", p)


if __name__ == "__main__":
    unittest.main()
