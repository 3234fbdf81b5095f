"""The local trace sink of `meshctl up`: OTLP/gRPC in, SQLite under the run dir, read by
`meshctl traces` and the dashboard. No Docker, no Jaeger: traces you can look at."""
