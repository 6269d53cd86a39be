"""The AWS CLI's language for `attrgate call`: options, shorthand, input files, output."""
