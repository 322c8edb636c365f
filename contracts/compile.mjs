// Compile the contracts with the pinned solc-js (WASM; nothing is downloaded) and write the
// artifacts the Python code loads. With --check, compile and compare byte for byte instead of
// writing: CI runs that, so every committed artifact always matches the committed sources.
//
// Two compilations with the same settings: AnchorRegistry alone (its artifact predates the vault
// and stays byte-identical), and the vault's contracts, which import OpenZeppelin's audited
// sources from node_modules (@openzeppelin/contracts, pinned in package-lock.json). The
// TimelockController artifact is OpenZeppelin's own contract, compiled here for deploying the
// vault's owner on development chains and in tests.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, "..");
// py-evm (the embedded eth-tester chain) supports up to Prague; solc 0.8.37 defaults to osaka.
const settings = {
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 200 },
  metadata: { bytecodeHash: "none" },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};
const TIMELOCK = "@openzeppelin/contracts/governance/TimelockController.sol";
const units = [
  {
    sources: ["AnchorRegistry.sol"],
    artifacts: [["AnchorRegistry.sol", "AnchorRegistry", "node/anchoring/artifacts/AnchorRegistry.json"]],
  },
  {
    sources: ["BaasToken.sol", "BaasVault.sol", "OperatorMultisig.sol", TIMELOCK],
    artifacts: [
      ["BaasToken.sol", "BaasToken", "node/chain/artifacts/BaasToken.json"],
      ["BaasVault.sol", "BaasVault", "node/chain/artifacts/BaasVault.json"],
      ["OperatorMultisig.sol", "OperatorMultisig", "node/chain/artifacts/OperatorMultisig.json"],
      [TIMELOCK, "TimelockController", "node/chain/artifacts/TimelockController.json"],
    ],
  },
];

function read(path) {
  return readFileSync(path.startsWith("@") ? join(here, "node_modules", path) : join(here, path), "utf8");
}

function findImports(path) {
  try {
    return { contents: read(path) };
  } catch {
    return { error: `not found: ${path}` };
  }
}

let failed = false;
for (const unit of units) {
  const sources = Object.fromEntries(unit.sources.map((path) => [path, { content: read(path) }]));
  const input = { language: "Solidity", sources, settings };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  if (errors.length) {
    for (const e of errors) console.error(e.formattedMessage);
    process.exit(1);
  }
  for (const [source, name, relative] of unit.artifacts) {
    const contract = output.contracts[source][name];
    const artifact = {
      contractName: name,
      compiler: { name: "solc-js", version: solc.version() },
      settings: { evmVersion: settings.evmVersion, optimizer: settings.optimizer, metadata: settings.metadata },
      abi: contract.abi,
      bytecode: "0x" + contract.evm.bytecode.object,
      deployedBytecode: "0x" + contract.evm.deployedBytecode.object,
    };
    const text = JSON.stringify(artifact, null, 2) + "\n";
    const artifactPath = join(repo, relative);
    if (process.argv.includes("--check")) {
      let committed = "";
      try { committed = readFileSync(artifactPath, "utf8"); } catch { committed = ""; }
      if (committed !== text) {
        console.error(`contract artifact ${relative} differs from a fresh compile of ${source}`);
        failed = true;
      }
    } else {
      writeFileSync(artifactPath, text);
      console.log(`wrote ${relative} (${solc.version()})`);
    }
  }
}
if (failed) process.exit(1);
if (process.argv.includes("--check")) {
  console.log(`contract artifacts match a fresh compile (${solc.version()})`);
}
