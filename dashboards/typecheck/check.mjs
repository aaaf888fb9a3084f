// Type-checks dashboard JSON files against @grafana/schema (see types.ts), offline.
//
//   node dashboards/typecheck/check.mjs              # every *.json under dashboards/
//   node dashboards/typecheck/check.mjs FILE.json... # just these
//
// Each file becomes an in-memory TypeScript module that assigns the JSON text, as an object
// literal, once to the data-source-specific type and once to Json<Dashboard>; the TypeScript
// compiler then reports every mismatch at the JSON file's own line and column.
// Exit status: 0 when all files check, 1 otherwise.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const here = path.dirname(fileURLToPath(import.meta.url));
const dashboardsDir = path.dirname(here);
const virtualDir = path.join(here, '__dashboards__');

function findDashboards(dir) {
  const found = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      if (full !== here && entry.name !== 'node_modules') found.push(...findDashboards(full));
    } else if (entry.name.endsWith('.json')) {
      found.push(full);
    }
  }
  return found.sort();
}

function dashboardType(json) {
  const variables = json?.templating?.list ?? [];
  const source = variables.find((v) => v.type === 'datasource');
  if (source?.query === 'prometheus') return 'PrometheusDashboard';
  if (source?.query === 'influxdb') return 'InfluxDashboard';
  return null;
}

const problems = [];
const files = process.argv.slice(2).map((f) => path.resolve(f));
const targets = files.length ? files : findDashboards(dashboardsDir);
const virtual = new Map(); // virtual .ts path -> { file, text, first, lines }

for (const file of targets) {
  const text = fs.readFileSync(file, 'utf8');
  let json;
  try {
    json = JSON.parse(text);
  } catch (err) {
    problems.push(`${file}: not valid JSON: ${err.message}`);
    continue;
  }
  const type = dashboardType(json);
  if (!type) {
    problems.push(`${file}: no "datasource" variable of type prometheus or influxdb`);
    continue;
  }
  const name = path.join(virtualDir, `${virtual.size}-${path.basename(file)}.ts`);
  const lines = text.split('\n').length;
  const source = [
    "import type { Dashboard, InfluxDashboard, Json, PrometheusDashboard } from '../types';",
    `export const typed: ${type} = ${text};`,
    `export const official: Json<Dashboard> = ${text};`,
    '',
  ].join('\n');
  virtual.set(name, { file, source, lines });
}

const options = {
  strict: true,
  noEmit: true,
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.ESNext,
  moduleResolution: ts.ModuleResolutionKind.Bundler,
  skipLibCheck: true,
  types: [],
};
const host = ts.createCompilerHost(options);
const realGetSourceFile = host.getSourceFile.bind(host);
const realFileExists = host.fileExists.bind(host);
const realReadFile = host.readFile.bind(host);
host.getSourceFile = (name, languageVersion, ...rest) => {
  const entry = virtual.get(path.resolve(name));
  if (entry) return ts.createSourceFile(name, entry.source, languageVersion, true);
  return realGetSourceFile(name, languageVersion, ...rest);
};
host.fileExists = (name) => virtual.has(path.resolve(name)) || realFileExists(name);
host.readFile = (name) => virtual.get(path.resolve(name))?.source ?? realReadFile(name);

const program = ts.createProgram([path.join(here, 'types.ts'), ...virtual.keys()], options, host);
for (const diagnostic of ts.getPreEmitDiagnostics(program)) {
  const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n  ');
  const source = diagnostic.file;
  if (!source) {
    problems.push(message);
    continue;
  }
  const entry = virtual.get(path.resolve(source.fileName));
  const { line, character } = source.getLineAndCharacterOfPosition(diagnostic.start ?? 0);
  if (!entry) {
    problems.push(`${source.fileName}:${line + 1}:${character + 1}: ${message}`);
    continue;
  }
  // Line 0 is the import; the JSON text starts on line 1 (typed) and line 1 + lines (official).
  const official = line >= 1 + entry.lines;
  const jsonLine = official ? line - entry.lines : line;
  const against = official ? 'Json<Dashboard>' : 'the panel and query types';
  problems.push(`${entry.file}:${jsonLine}:${character + 1}: (${against}) ${message}`);
}

if (problems.length) {
  for (const p of problems) console.error(p);
  console.error(`${problems.length} problem(s) in ${targets.length} dashboard file(s)`);
  process.exit(1);
}
console.log(`${targets.length} dashboard file(s) type-check against @grafana/schema`);
