"""Getting policy sets to the server and keeping them current: where a set comes from (a local
file or folder, a signed bundle in S3), what makes it reload (SIGHUP, a change on disk, a new
bundle), the candidate set evaluated beside the serving one, and the status `attrgate status`
reports."""
