import time

STARTED = time.monotonic()  # before the imports: train --stop-after-minutes counts from here

from . import lifeline  # noqa: E402

lifeline.follow_workflow()  # before torch's imports (seconds): a job whose workflow is gone ends now

from .cli import main  # noqa: E402

raise SystemExit(main(started=STARTED))
