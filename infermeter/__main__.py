from infermeter.kernel.cli import main

raise SystemExit(main())
