package integration

import "go.uber.org/zap/zapcore"

const zapLevelError = zapcore.ErrorLevel
