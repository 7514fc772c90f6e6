#!/usr/bin/env python3
"""Generate deploy/grafana/ballast.json (the Grafana dashboard): edit the panels
here, run `python3 deploy/grafana/generate.py`, commit both. The e2e test
`prometheus::dashboard_reads_only_metrics_ballast_exports` checks every query
against a running gateway and a real Prometheus."""
import json
import os

panels=[]; y=0; pid=1
DS={"type":"prometheus","uid":"${datasource}"}
def row(title):
    global y,pid
    panels.append({"type":"row","title":title,"collapsed":False,"id":pid,"gridPos":{"h":1,"w":24,"x":0,"y":y},"panels":[]}); pid+=1; y+=1
x=0; rowh=8
def panel(title, targets, unit="short", w=8, kind="timeseries", desc="", stack=False, extra=None):
    global x,y,pid
    if x+w>24: x=0; y+=rowh
    p={"id":pid,"type":kind,"title":title,"description":desc,"datasource":DS,"gridPos":{"h":rowh,"w":w,"x":x,"y":y},
       "fieldConfig":{"defaults":{"unit":unit,"custom":{"fillOpacity":10,"lineWidth":1,"stacking":{"mode":"normal" if stack else "none"}}},"overrides":[]},
       "options":{"legend":{"displayMode":"table","placement":"bottom","calcs":["lastNotNull","max"]},"tooltip":{"mode":"multi","sort":"desc"}},
       "targets":[{"datasource":DS,"refId":chr(65+i),"expr":e,"legendFormat":l,"range":True} for i,(e,l) in enumerate(targets)]}
    if extra: p.update(extra)
    panels.append(p); pid+=1; x+=w
def endrow():
    global x,y
    x=0; y+=rowh
J='job=~"$job"'
PJ='job=~"$job", pool=~"$pool"'
def q(h, sel, by, qs=(0.5,0.9,0.99)):
    return [(f'histogram_quantile({v}, sum by ({by}le) (rate({h}_bucket{{{sel}}}[$__rate_interval])))', f'p{int(v*100)}' + (' {{'+by.rstrip(', ')+'}}' if by else '')) for v in qs]

row("Requests")
panel("Requests by status", [(f'sum by (status) (rate(ballast_requests_total{{{J}, route=~"$route"}}[$__rate_interval]))',"{{status}}")], "reqps", stack=True, desc="Client requests answered per second, by HTTP status (499: the client left first).")
panel("5xx ratio by route", [(f'sum by (route) (rate(ballast_requests_total{{{J}, route=~"$route", status=~"5.."}}[$__rate_interval])) / sum by (route) (rate(ballast_requests_total{{{J}, route=~"$route"}}[$__rate_interval]))',"{{route}}")], "percentunit", desc="Share of requests answered with a 5xx. Objective: below 0.5 % (alert BallastErrorRateHigh).", extra={"fieldConfig":{"defaults":{"unit":"percentunit","custom":{"fillOpacity":10,"lineWidth":1,"thresholdsStyle":{"mode":"line"}},"thresholds":{"mode":"absolute","steps":[{"color":"green","value":None},{"color":"red","value":0.005}]}},"overrides":[]}})
panel("Request body bytes", [(f'sum by (encoding, stage) (rate(ballast_request_body_bytes_total{{{J}}}[$__rate_interval]))',"{{encoding}} {{stage}}")], "Bps", desc="Request bodies as received (wire) and after decoding (decoded).")
endrow()
panel("Latency of unary answers", q("ballast_request_duration_seconds", J+', route=~"$route", streamed="false"', ""), "s", desc="Request head to the end of the response, for answers that are not streamed. Objective: p99 below 500 ms (alert BallastLatencyP99High).")
panel("Time to first byte, streams", q("ballast_response_first_byte_seconds", J+', route=~"$route", streamed="true"', ""), "s", desc="Request head to the first bytes of a streamed answer reaching the client: queueing, retries and fallbacks included. Objective: p99 below 500 ms (alert BallastStreamFirstByteP99High).")
panel("Upstream first byte by pool", q("ballast_upstream_first_byte_seconds", PJ, "pool, ", (0.5,0.99)), "s", desc="From sending an attempt to its first response byte: the backends' own time to first token.")
endrow()
row("Servers")
panel("Outstanding per server", [(f'sum by (pool, server) (ballast_upstream_outstanding{{{PJ}}})',"{{pool}} {{server}}")], "short", desc="Requests in flight from this gateway to each server (compare with max_conns).")
panel("Usable servers per pool", [(f'sum by (pool) (ballast_upstream_up{{{PJ}}})',"usable {{pool}}"),(f'count by (pool) (ballast_upstream_up{{{PJ}}} == 0)',"not usable {{pool}}")], "short", desc="Servers that can take requests. A pool at 0 sheds (alert BallastPoolNoUsableServer).")
panel("Server state", [(f'min by (pool, server) (ballast_upstream_up{{{PJ}}})',"{{pool}} {{server}}")], "short", kind="state-timeline", desc="1 up, 0 down (health), ejected (max_fails) or cooling (Retry-After).", extra={"fieldConfig":{"defaults":{"mappings":[{"type":"value","options":{"0":{"text":"not usable","color":"red"},"1":{"text":"up","color":"green"}}}],"color":{"mode":"thresholds"},"thresholds":{"mode":"absolute","steps":[{"color":"red","value":None},{"color":"green","value":1}]}},"overrides":[]},"options":{"showValue":"never","legend":{"showLegend":False}}})
endrow()
panel("Ejections", [(f'sum by (pool, server) (increase(ballast_upstream_ejections_total{{{PJ}}}[$__rate_interval]))',"{{pool}} {{server}}")], "short", kind="timeseries", desc="Servers taken out after max_fails failures within fail_timeout.")
panel("Cooldowns (Retry-After)", [(f'max by (pool, server) (ballast_upstream_cooldown_seconds{{{PJ}}}) > 0',"{{pool}} {{server}}")], "s", desc="Seconds left before a server that answered 429 or 503 with Retry-After is tried again.")
panel("Attempts by outcome", [(f'sum by (outcome) (rate(ballast_upstream_attempts_total{{{PJ}}}[$__rate_interval]))',"{{outcome}}")], "reqps", stack=True, desc="Upstream attempts by status or failure kind (connect_error, timeout, reset).")
endrow()
row("Capacity")
panel("Queue depth", [(f'sum by (pool) (ballast_queue_depth{{{PJ}}})',"{{pool}}")], "short", desc="Requests waiting for a server under max_conns. Objective: below 100 (alert BallastQueueDepthHigh).")
panel("Queue wait", q("ballast_queue_wait_seconds", PJ, "pool, ", (0.5,0.99)), "s", desc="How long queued requests waited for a server.")
panel("Shed", [(f'sum by (pool, reason) (rate(ballast_shed_total{{{PJ}}}[$__rate_interval]))',"{{pool}} {{reason}}")], "reqps", stack=True, desc="Requests turned away with 503 + Retry-After: queue_full, queue_timeout, evicted.")
endrow()
panel("Retries by reason", [(f'sum by (route, reason) (rate(ballast_retries_total{{{J}, route=~"$route"}}[$__rate_interval]))',"{{route}} {{reason}}")], "reqps", stack=True, desc="Retries by the outcome that caused them; budget_exhausted counts retries the retry budget refused.")
panel("Client connections", [(f'sum(ballast_client_connections{{{J}}})',"open"),(f'sum by (reason) (rate(ballast_connections_refused_total{{{J}}}[$__rate_interval]))',"refused {{reason}}/s")], "short", desc="Open client connections and connections refused before a request was read.")
panel("Config reloads", [(f'sum by (result) (increase(ballast_config_reloads_total{{{J}}}[$__rate_interval]))',"{{result}}")], "short", kind="timeseries", desc="SIGHUP and POST /reload, by result (error: nothing changed).")
endrow()
row("Routing")
panel("Affinity decisions", [(f'sum by (pool, result) (rate(ballast_affinity_decisions_total{{{PJ}}}[$__rate_interval]))',"{{pool}} {{result}}")], "reqps", stack=True, desc="Prefix or session affinity: hit (the server holding the prompt's prefix or the session got it), miss (none holds enough of the prompt), overloaded (the holder was too busy or unusable).")
panel("Prefix store", [(f'sum by (pool) (ballast_prefix_store_blocks{{{PJ}}})',"{{pool}}")], "short", desc="Prompt blocks a prefix-affinity pool remembers (bounded by pool.affinity.entries).")
panel("Load scrapes", [(f'sum by (pool, result) (rate(ballast_load_scrapes_total{{{PJ}}}[$__rate_interval]))',"{{pool}} {{result}}")], "short", desc="Scrapes of the servers' own metrics ([pool.load_metrics]): ok, missing (no load metric on the page), error.")
endrow()
row("Client keys")
panel("Requests by key", [(f'sum by (key) (rate(ballast_key_requests_total{{{J}}}[$__rate_interval]))',"{{key}}")], "reqps", stack=True, desc="Requests admitted per client key (by name).")
panel("Tokens by key", [(f'sum by (key, kind) (rate(ballast_key_tokens_total{{{J}}}[$__rate_interval]))',"{{key}} {{kind}}")], "short", stack=True, desc="Prompt tokens (estimated at the edge) and completion tokens (counted from answers) per second, per key.")
panel("Refused", [(f'sum by (key, reason) (rate(ballast_key_rejections_total{{{J}}}[$__rate_interval]))',"{{key}} {{reason}}"),(f'sum by (reason) (rate(ballast_auth_failures_total{{{J}}}[$__rate_interval]))',"401 {{reason}}")], "reqps", stack=True, desc="429 (rpm, tpm, concurrency) and 403 (route, model) per key; 401 (missing, invalid key).")
endrow()
panel("Rate-limit store", [(f'min(ballast_ratelimit_store_up{{{J}}})',"up (min over gateways)"),(f'sum by (decision) (rate(ballast_ratelimit_store_errors_total{{{J}}}[$__rate_interval]))',"errors {{decision}}/s")], "short", desc="Whether the Redis of [ratelimit] answers, and what happened when it did not.")
endrow()
row("Streams")
panel("Streams open", [(f'sum by (kind) (ballast_streams_active{{{J}}})',"{{kind}}")], "short", desc="Open event streams (sse) and spliced upgraded connections (websocket).")
panel("Stream aborts", [(f'sum by (reason) (rate(ballast_stream_aborts_total{{{J}}}[$__rate_interval]))',"{{reason}}")], "short", stack=True, desc="Responses cut after bytes reached the client, by reason.")
panel("Stream duration", q("ballast_stream_duration_seconds", J, "kind, ", (0.5,0.99)), "s", desc="How long streams stayed open.")
panel("Stream resumes", [(f'sum by (pool, result) (rate(ballast_stream_resumes_total{{{PJ}}}[$__rate_interval]))',"{{pool}} {{result}}")], "short", stack=True, desc="Streams cut after bytes reached the client, by the pool that cut them: resumed on another server ([route.resume]), refused or failed (the client got the error event), or why no resume was tried (limit, deadline, tool_call, multi_choice, reasoning, unreadable, finished).")
endrow()
row("Jobs and RabbitMQ")
panel("Jobs", [(f'sum by (state) (ballast_jobs{{{J}}})',"{{state}}")], "short", desc="Asynchronous jobs (Prefer: respond-async) queued or running.")
panel("Jobs finished", [(f'sum by (route, result) (rate(ballast_jobs_total{{{J}, route=~"$route"}}[$__rate_interval]))',"{{route}} {{result}}")], "short", stack=True, desc="Jobs finished per second: succeeded, failed, cancelled, expired.")
panel("Job wait", q("ballast_job_wait_seconds", f'{J}, route=~"$route"', ""), "s", desc="From a job's submission to its first start: jobs run only with spare capacity.")
panel("RabbitMQ messages", [(f'sum by (consumer, result) (rate(ballast_amqp_messages_total{{{J}}}[$__rate_interval]))',"{{consumer}} {{result}}")], "short", stack=True, desc="[[amqp]] messages settled per second: succeeded (replied, acked), refused (the backend's 4xx), failed (attempts spent) and invalid; all but succeeded are dead-lettered.")
panel("RabbitMQ consumers", [(f'min by (consumer) (ballast_amqp_connected{{{J}}})',"connected {{consumer}}"), (f'sum by (consumer) (ballast_amqp_prefetch{{{J}}})',"prefetch {{consumer}}")], "short", desc="Whether every replica's consumer is connected (alert BallastAmqpDisconnected), and the prefetch window, which follows free backend slots.")
panel("RabbitMQ disconnects", [(f'sum by (consumer) (increase(ballast_amqp_disconnects_total{{{J}}}[$__rate_interval]))',"{{consumer}}")], "short", desc="Broker connections lost or not made.")
endrow()

def var(name, label, query, multi=True):
    return {"name":name,"label":label,"type":"query","datasource":DS,"query":{"query":query,"refId":name},"definition":query,
            "refresh":2,"includeAll":True,"multi":multi,"allValue":".*","current":{"selected":True,"text":["All"],"value":["$__all"]},"sort":1}
dash={
 "__inputs":[{"name":"DS_PROMETHEUS","label":"Prometheus","type":"datasource","pluginId":"prometheus","pluginName":"Prometheus"}],
 "title":"Ballast","uid":"ballast-overview","description":"Ballast gateway: requests, latency objectives, servers, capacity and streams.",
 "tags":["ballast","gateway","llm"],"timezone":"browser","editable":True,"graphTooltip":1,"refresh":"30s","schemaVersion":39,"version":1,
 "time":{"from":"now-1h","to":"now"},
 "templating":{"list":[
   {"name":"datasource","label":"Data source","type":"datasource","query":"prometheus","current":{},"hide":0,"refresh":1},
   var("job","Job","label_values(ballast_requests_total, job)"),
   var("route","Route",'label_values(ballast_requests_total{job=~"$job"}, route)'),
   var("pool","Pool",'label_values(ballast_queue_depth{job=~"$job"}, pool)'),
 ]},
 "annotations":{"list":[{"name":"Config reloads","datasource":DS,"enable":True,"iconColor":"blue",
   "expr":'changes(ballast_config_reloads_total{job=~"$job", result="ok"}[1m]) > 0',"titleFormat":"config reloaded","step":"30s"}]},
 "panels":panels}
json.dump(dash, open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ballast.json"), "w"), indent=2)
