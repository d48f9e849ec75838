"""OpenTelemetry spans and metrics when the API is installed; nothing at all when it is not."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCENARIO = textwrap.dedent('''
    import json, logging, sys
    from sqlalchemy.orm import Session
    from chimeway import Chimeway, Notifier, Recipient
    from chimeway.models import metadata
    from chimeway.testing import RecordingChannel
    from chimeway import telemetry

    traced = telemetry.ENABLED
    if traced:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        trace.set_tracer_provider(provider)
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

    class Broken(RecordingChannel):
        def send(self, message):
            from chimeway.values import DeliveryResult
            return DeliveryResult.permanent("mailbox does not exist", vendor_code="550")

    class Hello(Notifier):
        key = "otel_hello"
        channels = ["good", "bad"]
        templates = {"good": {"body": "hi"}, "bad": {"body": "hi"}}
        def recipients(self, params):
            return [Recipient(id="user:1")]

    lines = []
    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(getattr(record, "chimeway_event", None))
    logging.getLogger("chimeway").addHandler(Keep())

    app = Chimeway(sys.argv[1], dispatcher="queue", channels={"good": RecordingChannel(), "bad": Broken()})
    metadata.create_all(app.engine)
    if traced:
        telemetry.observe_queue_depth(app.queue)
    with Session(app.engine) as session, session.begin():
        result = app.trigger(session, Hello, {}, idempotency_key="k")
    app.work()
    out = {"enabled": traced, "otel_loaded": any(k.startswith("opentelemetry") and m is not None for k, m in sys.modules.items()), "events": lines,
           "statuses": sorted(app.explain(d).status for d in result.delivery_ids)}
    if traced:
        finished = spans.get_finished_spans()
        out["spans"] = sorted({s.name for s in finished})
        trigger = next(s for s in finished if s.name == "chimeway.trigger")
        out["trigger_ids"] = sorted(trigger.attributes["chimeway.delivery.ids"])
        out["delivery_ids"] = sorted(str(d) for d in result.delivery_ids)
        out["parents"] = {s.name: next((p.name for p in finished if s.parent and p.context.span_id == s.parent.span_id), None)
                          for s in finished if s.name in ("chimeway.plan", "chimeway.policy", "chimeway.dispatch")}
        points = {}
        for rm in reader.get_metrics_data().resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    points[m.name] = [dict(p.attributes) for p in m.data.data_points]
        out["metrics"] = points
    print(json.dumps(out))
''')


def _run(tmp_path: Path, *prelude: str) -> dict[str, object]:
    script = tmp_path / "scenario.py"
    script.write_text("\n".join(prelude) + SCENARIO)
    done = subprocess.run([sys.executable, str(script), f"sqlite:///{tmp_path / 'otel.db'}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_spans_and_metrics_follow_a_trigger_to_its_attempts(tmp_path: Path) -> None:
    out = _run(tmp_path)
    assert out["enabled"] is True
    assert out["spans"] == ["chimeway.attempt", "chimeway.dispatch", "chimeway.job", "chimeway.plan",
                            "chimeway.policy", "chimeway.trigger", "chimeway.workflow"]
    assert out["trigger_ids"] == out["delivery_ids"]
    assert out["parents"] == {"chimeway.plan": "chimeway.trigger", "chimeway.policy": "chimeway.plan",
                              "chimeway.dispatch": "chimeway.trigger"}
    metrics = out["metrics"]
    assert isinstance(metrics, dict)
    assert sorted(metrics["chimeway.deliveries"], key=str) == [
        {"status": "cancelled", "channel": "bad"}, {"status": "succeeded", "channel": "good"}]
    assert {"channel": "bad", "outcome": "permanent"} in metrics["chimeway.send.duration"]
    assert metrics["chimeway.job.queue_latency"] == [{"queue": "chimeway_delivery"}]
    assert {"queue": "chimeway_delivery", "state": "completed"} in metrics["chimeway.jobs"]
    assert {"queue": "chimeway_delivery", "state": "completed"} in metrics["chimeway.queue.depth"]
    assert out["statuses"] == ["cancelled", "succeeded"]
    assert "delivery.cancelled" in out["events"]  # type: ignore[operator]


def test_without_opentelemetry_nothing_is_imported_and_everything_works(tmp_path: Path) -> None:
    out = _run(tmp_path, "import sys", "sys.modules['opentelemetry'] = None  # as if not installed")
    assert out["enabled"] is False and out["otel_loaded"] is False
    assert out["statuses"] == ["cancelled", "succeeded"]
    assert "delivery.cancelled" in out["events"]  # type: ignore[operator]


LATE_PROVIDER = textwrap.dedent('''
    import json, sys
    from sqlalchemy.orm import Session
    from chimeway import Chimeway, Notifier, Recipient, telemetry
    from chimeway.models import metadata
    from chimeway.testing import RecordingChannel

    built = []
    real_span = telemetry._span
    def counting_span(name, attributes):
        built.append(name)
        return real_span(name, attributes)
    telemetry._span = counting_span

    class Late(Notifier):
        key = "otel_late"
        channels = ["good"]
        templates = {"good": {"body": "hi"}}
        def recipients(self, params):
            return [Recipient(id="user:1")]

    app = Chimeway(sys.argv[1], dispatcher="queue", channels={"good": RecordingChannel()})
    metadata.create_all(app.engine)
    with Session(app.engine) as session, session.begin():
        app.trigger(session, Late, {}, idempotency_key="before")
    app.work()
    before = {"tracing": telemetry.tracing(), "metering": telemetry.metering(), "spans": list(built)}

    # The application configures the SDK after Chimeway was imported and used.
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(provider)
    with Session(app.engine) as session, session.begin():
        app.trigger(session, Late, {}, idempotency_key="after")
    app.work()
    after = {"tracing": telemetry.tracing(), "metering": telemetry.metering(),
             "exported": sorted({s.name for s in spans.get_finished_spans()})}
    print(json.dumps({"before": before, "after": after}))
''')


def test_no_provider_builds_no_span_and_a_provider_set_later_is_used(tmp_path: Path) -> None:
    script = tmp_path / "late.py"
    script.write_text(LATE_PROVIDER)
    done = subprocess.run([sys.executable, str(script), f"sqlite:///{tmp_path / 'late.db'}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # Installed but unconfigured: a trigger and its delivery job build nothing at all.
    assert out["before"] == {"tracing": False, "metering": False, "spans": []}
    assert out["after"]["tracing"] is True and out["after"]["metering"] is False
    assert {"chimeway.trigger", "chimeway.plan", "chimeway.job", "chimeway.attempt"} <= set(out["after"]["exported"])
