// Validates prometheus-operator custom resources (ServiceMonitor,
// PrometheusRule) against the schemas of the operator's CRDs, as packaged
// by @kubernetes-models/prometheus-operator. Reads a JSON array of
// resources on stdin; prints every problem and exits 1 if there is one.
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const kinds = { ServiceMonitor, PrometheusRule };
let input = "";
for await (const chunk of process.stdin) input += chunk;
let failed = false;
for (const doc of JSON.parse(input)) {
  const name = `${doc.kind}/${doc.metadata?.name}`;
  const Model = kinds[doc.kind];
  if (!Model) {
    console.error(`${name}: no schema for this kind here`);
    failed = true;
    continue;
  }
  try {
    new Model(doc).validate();
    console.log(`${name}: valid (prometheus-operator CRD schema)`);
  } catch (e) {
    console.error(`${name}: ${e.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
