from falcon.cli import main

raise SystemExit(main())
