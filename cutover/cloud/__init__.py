"""Google Cloud's APIs as the DMS engine needs them: DMS, Cloud SQL Admin, Cloud Monitoring.

`client` builds the API clients from the discovery documents bundled with
google-api-python-client and sends each call with bounded retries; `resources`
maps what the APIs answer to typed values; `datamigration`, `sqladmin` and
`monitoring` are the calls themselves. Only this package and the DMS engine
import googleapiclient; nothing here imports psycopg.
"""
