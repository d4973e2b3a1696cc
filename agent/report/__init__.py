"""Report documents: what a run found and did, in the shape schemas/report.schema.json fixes."""
