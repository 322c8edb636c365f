// Compile AnchorRegistry.sol with the pinned solc-js (WASM; nothing is downloaded) and write the
// artifact the Python code loads. With --check, compile and compare byte for byte instead of
// writing: CI runs that, so the committed artifact always matches the committed source.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const here = dirname(fileURLToPath(import.meta.url));
const artifactPath = join(here, "..", "node", "anchoring", "artifacts", "AnchorRegistry.json");
const source = readFileSync(join(here, "AnchorRegistry.sol"), "utf8");
// py-evm (the embedded eth-tester chain) supports up to Prague; solc 0.8.37 defaults to osaka.
const settings = {
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 200 },
  metadata: { bytecodeHash: "none" },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};
const input = { language: "Solidity", sources: { "AnchorRegistry.sol": { content: source } }, settings };
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  for (const e of errors) console.error(e.formattedMessage);
  process.exit(1);
}
const contract = output.contracts["AnchorRegistry.sol"].AnchorRegistry;
const artifact = {
  contractName: "AnchorRegistry",
  compiler: { name: "solc-js", version: solc.version() },
  settings: { evmVersion: settings.evmVersion, optimizer: settings.optimizer, metadata: settings.metadata },
  abi: contract.abi,
  bytecode: "0x" + contract.evm.bytecode.object,
  deployedBytecode: "0x" + contract.evm.deployedBytecode.object,
};
const text = JSON.stringify(artifact, null, 2) + "\n";
if (process.argv.includes("--check")) {
  let committed = "";
  try { committed = readFileSync(artifactPath, "utf8"); } catch { committed = ""; }
  if (committed !== text) {
    console.error(`contract artifact ${artifactPath} differs from a fresh compile of AnchorRegistry.sol`);
    process.exit(1);
  }
  console.log(`contract artifact matches a fresh compile (${solc.version()})`);
} else {
  writeFileSync(artifactPath, text);
  console.log(`wrote ${artifactPath} (${solc.version()})`);
}
