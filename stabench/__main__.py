from . import lifeline

lifeline.follow_workflow()  # before torch's imports (seconds): a job whose workflow is gone ends now

from .cli import main  # noqa: E402

raise SystemExit(main())
