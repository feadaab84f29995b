// Package entry for TypeScript users: the client library.
export * from "./client/index.ts";
