from diffagent.cli import main

raise SystemExit(main())
