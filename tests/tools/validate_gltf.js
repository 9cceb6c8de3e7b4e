// Validates glTF/GLB files with the Khronos glTF-Validator; prints one JSON report per file (an array).
// Usage: node validate_gltf.js FILE... (run by tests/gltf_validator.py).
"use strict";
const fs = require("fs");
const path = require("path");
const validator = require("gltf-validator");

async function validate(file) {
  const bytes = new Uint8Array(fs.readFileSync(file));
  const report = await validator.validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues: 0, // all of them
    externalResourceFunction: (uri) =>
      Promise.resolve(new Uint8Array(fs.readFileSync(path.join(path.dirname(file), decodeURIComponent(uri))))),
  });
  return { file, ...report };
}

Promise.all(process.argv.slice(2).map(validate))
  .then((reports) => process.stdout.write(JSON.stringify(reports)))
  .catch((error) => {
    process.stderr.write(`${error}\n`);
    process.exit(1);
  });
