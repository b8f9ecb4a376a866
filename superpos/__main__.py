from superpos.cli.main import main

raise SystemExit(main())
