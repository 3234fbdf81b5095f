from mesh.local.traces.receiver import main

raise SystemExit(main())
