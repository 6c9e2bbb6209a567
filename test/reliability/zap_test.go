package reliability

import "go.uber.org/zap/zapcore"

const zapError = zapcore.ErrorLevel
