// Parses and validates an AsyncAPI document with the AsyncAPI initiative's own parser
// (@asyncapi/parser, pinned by package-lock.json), resolving its $refs into the schema file.
// Prints every diagnostic; exits 1 when the document does not parse or has an error or a
// warning (severity 0 or 1). Run by tests/schemas.rs.
import { Parser, fromFile } from '@asyncapi/parser';

const path = process.argv[2];
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, path).parse();
let bad = document ? 0 : 1;
for (const d of diagnostics) {
  console.log(`severity ${d.severity} ${d.code}: ${d.message} at ${JSON.stringify(d.path)}`);
  if (d.severity <= 1) bad = 1;
}
if (document) {
  console.log(`parsed: ${document.channels().length} channels, ${document.operations().length} operations, ${document.components().messages().length} messages`);
}
process.exit(bad);
