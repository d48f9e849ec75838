"""A mention that escalates until someone reads it — a whole journey in milliseconds.

    in-app now → 30 min, unless read → email → 4 h, unless read → SMS to the manager

Run it with no setup (a temporary SQLite file, a fake clock, recording channels):

    python examples/mention_escalation.py

Two mentions are triggered. Ana never reads hers, so it escalates all the way
to her manager; Ben reads his after the email, which stops his run. Each step
is printed with the run's own explanation of why it moved.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from chimeway import Chimeway, Notifier, Recipient
from chimeway.testing import FakeClock, RecordingChannel
from chimeway.workflow import deliver, wait

MANAGERS = {"user:ana": "user:carla", "user:ben": "user:carla"}


def manager_of(params: Mapping[str, Any], recipient: Recipient) -> Recipient:
    """The escalation target: the mentioned person's manager."""
    return Recipient(id=MANAGERS[recipient.id], phone="+15550100")


class Mentioned(Notifier):
    key = "mentioned"
    version = 1
    templates = {
        "in_app": {"title": "{{ by }} mentioned you", "body": "{{ excerpt }}"},
        "email": {"subject": "{{ by }} is waiting for you", "body": "{{ excerpt }}"},
        "sms": {"body": "{{ by }} mentioned your report {{ params.user }} 4h ago; nobody has read it."},
    }
    workflow = [
        deliver("in_app"),
        wait(minutes=30, unless="notification.read"),
        deliver("email"),
        wait(hours=4, unless="notification.read"),
        deliver("sms", to=manager_of),
    ]

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=params["user"], email=f"{params['user'][5:]}@example.test")]


def show(app: Chimeway, label: str, notification_id: Any) -> None:
    run = app.explain_run(notification_id=notification_id)
    last = run.transitions[-1]
    print(f"  {label:<4} {run.state:<9} at step {run.step if run.step is not None else '-'}: {last.why}")


def main() -> None:
    clock = FakeClock()
    email, sms = RecordingChannel(), RecordingChannel()
    with tempfile.TemporaryDirectory() as tmp:
        app = Chimeway(f"sqlite:///{Path(tmp) / 'mentions.db'}", clock=clock,
                       channels={"email": email, "sms": sms})
        app.migrate()
        with Session(app.engine) as session, session.begin():
            ana = app.trigger(session, Mentioned, {"user": "user:ana", "by": "Dana", "excerpt": "Q3 numbers?"},
                              idempotency_key="mention-1").notification_ids[0]
            ben = app.trigger(session, Mentioned, {"user": "user:ben", "by": "Dana", "excerpt": "Slides?"},
                              idempotency_key="mention-2").notification_ids[0]
        app.work()

        def moment(title: str) -> None:
            print(f"{clock.now():%H:%M}  {title}")
            show(app, "ana", ana)
            show(app, "ben", ben)

        moment("mentioned: both see it in their in-app inbox")
        clock.advance(minutes=30)
        app.work()
        moment(f"30 minutes, nobody read it: emails sent to {', '.join(m.recipient.id for m in email.sent)}")
        clock.advance(minutes=45)
        app.inbox("user:ben").mark_read(ben)
        app.work()
        moment("Ben opens the mention")
        clock.advance(hours=4)
        app.work()
        moment(f"4 more hours: SMS to {', '.join(m.recipient.id for m in sms.sent)}: {sms.sent[0].fields['body']!r}")

        print()
        print(app.explain_run(notification_id=ana))
        print()
        print(app.explain_run(notification_id=ben))
        print()
        print(app.explain(sms.sent[0].delivery_id))
        app.close()


if __name__ == "__main__":
    main()
