from attrgate.cli import main

raise SystemExit(main())
